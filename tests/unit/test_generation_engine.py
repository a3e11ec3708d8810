"""The decode loop, continuous batching and sampling on a real (tiny, random) Llama decoder.

The decoder is optimum's text-generation-with-past export of a 2-layer Llama, run by
the real cpu and openvino providers; the reference is transformers' own greedy
``generate`` on the same weights.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from portable_ep.backends import LoadRequest, find_model_artifacts
from portable_ep.backends.registry import default_registry
from portable_ep.generation.decoder import Decoder, DecodeBatch, NotADecoder
from portable_ep.generation.engine import EngineLimits, GenerationEngine, GenerationRequest, Overloaded, RequestRefused
from portable_ep.generation.sampling import Sampler, SamplingError, SamplingParams
from portable_ep.generation.tokenizer import BundleTokenizer, IncrementalDetokenizer

torch = pytest.importorskip("torch", reason="the reference continuations come from transformers (export extra)")

PROMPTS = ["The capital of France is", "Once upon a time, in a small village", "x", "Numbers: 1, 2, 3, 4, 5, 6, 7"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder with model.onnx + tokenizer.json, transformers model) of a tiny random Llama."""
    from tiny_llm import export_tiny_llama

    return export_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _session(folder: Path, provider: str):
    return default_registry().get(provider).load(LoadRequest(artifacts=find_model_artifacts(folder)))


def _reference(model, ids, n):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def references(tiny):
    folder, model = tiny
    tokenizer = BundleTokenizer(folder)
    return {p: _reference(model, tokenizer.encode(p), 24) for p in PROMPTS}


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_greedy_matches_transformers(tiny, references, provider):
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    decoder = Decoder(_session(folder, provider))
    for prompt, expected in references.items():
        assert decoder.greedy(tokenizer.encode(prompt), 24) == expected, prompt


def test_sequences_joining_and_leaving_a_batch_keep_their_own_tokens(tiny, references):
    """Left-padded rows, added mid-decode and removed early, produce what they produce alone."""
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    batch = DecodeBatch(Decoder(_session(folder, "cpu")))
    outputs = {p: [] for p in PROMPTS}
    rows, lengths = [], {PROMPTS[0]: 24, PROMPTS[1]: 24, PROMPTS[2]: 7, PROMPTS[3]: 24}
    joins = {0: PROMPTS[0], 3: PROMPTS[1], 4: PROMPTS[2], 9: PROMPTS[3]}  # step -> prompt joining
    for step in range(60):
        if step in joins:
            logits = batch.add(tokenizer.encode(joins[step]))
            rows.append(joins[step])
            outputs[joins[step]].append(int(np.argmax(logits)))
        done = [i for i, p in enumerate(rows) if len(outputs[p]) >= lengths[p]]
        batch.remove(done)
        rows = [p for i, p in enumerate(rows) if i not in done]
        if not rows:
            break
        logits = batch.step([outputs[p][-1] for p in rows])
        for p, row in zip(rows, logits):
            outputs[p].append(int(np.argmax(row)))
    for prompt in PROMPTS:
        assert outputs[prompt][: lengths[prompt]] == references[prompt][: lengths[prompt]], prompt
    assert batch.cache_tokens == 0 or len(batch) == 0


def _collect():
    outputs, done = [], threading.Event()

    def on_output(output):
        outputs.append(output)
        if output.finish_reason or output.error:
            done.set()
    return outputs, done, on_output


def _engine(folder, provider="cpu", **limits):
    decoder = Decoder(_session(folder, provider))
    settings = {"context_length": 128, "kv_budget_bytes": 64 << 20, "max_batch": 4, **limits}
    return GenerationEngine(decoder, BundleTokenizer(folder), [0], EngineLimits(**settings))


def test_continuous_batching_engine_streams_each_request_its_own_greedy_text(tiny, references):
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    engine = _engine(folder, max_batch=3).start()  # 4 requests, 3 slots: one waits for a free row
    try:
        collected = {}
        for prompt in PROMPTS:
            outputs, done, on_output = _collect()
            collected[prompt] = (outputs, done)
            params = SamplingParams.build({"max_tokens": 24, "temperature": 0, "ignore_eos": True})
            engine.submit(GenerationRequest(tokenizer.encode(prompt), params, on_output))
            time.sleep(0.005)
        for prompt, (outputs, done) in collected.items():
            assert done.wait(30)
            ids = [t for o in outputs for t in o.token_ids]
            assert ids == references[prompt], prompt
            assert "".join(o.text for o in outputs) == tokenizer.decode(references[prompt])
            assert outputs[-1].finish_reason == "length"
        assert engine.reserved_bytes == 0
    finally:
        engine.stop()


def test_stop_strings_min_tokens_and_cancellation(tiny, references):
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    prompt = PROMPTS[1]
    full = tokenizer.decode(references[prompt])
    stop = full[len(full) // 2: len(full) // 2 + 3]
    engine = _engine(folder)
    outputs, done, on_output = _collect()
    engine.submit(GenerationRequest(tokenizer.encode(prompt), SamplingParams.build(
        {"max_tokens": 24, "temperature": 0, "stop": [stop]}), on_output))
    while not done.is_set():
        engine.step()
    text = "".join(o.text for o in outputs)
    assert outputs[-1].finish_reason == "stop" and text == full[: full.index(stop)]
    assert stop not in text  # never streamed and taken back

    # min_tokens: the end-of-sequence token the model wants first is banned until then
    first = references[prompt][0]
    engine = GenerationEngine(engine.decoder, tokenizer, [first], engine.limits)
    outputs, done, on_output = _collect()
    engine.submit(GenerationRequest(tokenizer.encode(prompt), SamplingParams.build(
        {"max_tokens": 5, "min_tokens": 3, "temperature": 0}), on_output))
    while not done.is_set():
        engine.step()
    ids = [t for o in outputs for t in o.token_ids]
    assert first not in ids[:3] and len(ids) >= 3

    cancelled = threading.Event()
    outputs, done, on_output = _collect()
    engine.submit(GenerationRequest(tokenizer.encode(prompt), SamplingParams.build({"max_tokens": 100, "ignore_eos": True}),
                                    on_output, is_cancelled=cancelled.is_set))
    for _ in range(3):
        engine.step()
    cancelled.set()
    engine.step()
    assert outputs[-1].finish_reason == "cancelled" and engine.idle() and engine.reserved_bytes == 0


def test_limits_refuse_with_the_numbers(tiny):
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    engine = _engine(folder, context_length=32)
    per_token = engine.bytes_per_token
    with pytest.raises(RequestRefused, match=r"prompt is \d+ tokens and the model's context is 32"):
        engine.submit(GenerationRequest(tokenizer.encode("word " * 40), SamplingParams(), lambda o: None))
    with pytest.raises(RequestRefused, match="empty"):
        engine.submit(GenerationRequest([], SamplingParams(), lambda o: None))
    small = _engine(folder, kv_budget_bytes=per_token * 40)
    small.submit(GenerationRequest(tokenizer.encode("hello"), SamplingParams(max_tokens=30), lambda o: None))
    with pytest.raises(Overloaded, match="KV cache full.*1 running requests.*generation.kv_cache_mb"):
        small.submit(GenerationRequest(tokenizer.encode("hello"), SamplingParams(max_tokens=30), lambda o: None))
    # larger than the whole budget: the request's own fault (INVALID_ARGUMENT), not a full cache (UNAVAILABLE)
    with pytest.raises(RequestRefused, match="lower max_tokens or raise") as refused:
        small.submit(GenerationRequest(tokenizer.encode("hello"), SamplingParams(max_tokens=100), lambda o: None))
    assert not isinstance(refused.value, Overloaded)


def test_a_failed_pass_ends_its_sequences_and_the_engine_serves_on(tiny, references):
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    engine = _engine(folder)
    real_forward = engine.decoder.forward
    calls = {"n": 0}

    def failing_forward(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device lost")
        return real_forward(*args)
    engine.decoder.forward = failing_forward
    outputs, done, on_output = _collect()
    engine.submit(GenerationRequest(tokenizer.encode(PROMPTS[0]), SamplingParams(max_tokens=10, temperature=0), on_output))
    while not done.is_set():
        engine.step()
    assert outputs[-1].error and "device lost" in outputs[-1].error
    engine.decoder.forward = real_forward
    outputs, done, on_output = _collect()
    engine.submit(GenerationRequest(tokenizer.encode(PROMPTS[0]), SamplingParams.build(
        {"max_tokens": 24, "temperature": 0, "ignore_eos": True}), on_output))
    while not done.is_set():
        engine.step()
    assert [t for o in outputs for t in o.token_ids] == references[PROMPTS[0]]


def test_not_a_decoder_is_named():
    class Fake:
        inputs = ()
        outputs = ()
    with pytest.raises(NotADecoder, match="not a decoder with a KV cache"):
        Decoder(Fake())


def test_sampling_parameters_are_vllms_and_wrong_ones_are_named():
    params = SamplingParams.from_request('{"max_tokens": 8, "temperature": 0, "stop": "END"}', {"top_k": "5", "other": 1})
    assert (params.max_tokens, params.greedy, params.stop, params.top_k) == (8, True, ["END"], 5)
    assert SamplingParams().max_tokens == 16 and SamplingParams().temperature == 1.0  # vLLM's defaults
    for text, words in [('{"max_tokens": 0}', "max_tokens must be at least 1"),
                        ('{"temperature": -1}', "temperature must be >= 0"),
                        ('{"top_p": 1.5}', "top_p"),
                        ('{"max_tokens": "many"}', "max_tokens='many' must be an integer"),
                        ('{"temperatur": 0}', "unknown sampling parameter.*temperatur"),
                        ('{"n": 2}', "n=2 is not supported"),
                        ('[1, 2]', "must be a JSON object"),
                        ('{"max_tokens": 8', "not JSON")]:
        with pytest.raises(SamplingError, match=words):
            SamplingParams.from_request(text)


def test_sampler_respects_top_k_top_p_and_seed():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = lambda params: [Sampler(params)(logits, []) for _ in range(1)]  # noqa: E731
    seeded = [Sampler(SamplingParams(seed=7))(logits, []) for _ in range(5)]
    assert len(set(seeded)) == 1  # a fresh sampler with the same seed draws the same token
    sampler = Sampler(SamplingParams(top_k=2, seed=1))
    assert {sampler(logits, []) for _ in range(200)} == {0, 1}
    sampler = Sampler(SamplingParams(top_p=0.7, seed=1))
    assert {sampler(logits, []) for _ in range(200)} == {0, 1}
    assert draws(SamplingParams(temperature=0)) == [0]
    # repetition penalty turns greedy away from a token already in the history
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=10.0))(logits, [0]) == 1


def test_detokenizer_holds_back_half_characters(tiny):
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    text = "naïve café — 日本語"
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(t) for t in tokenizer.encode(text)]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.flush() == tokenizer.decode(tokenizer.encode(text))


def test_a_request_the_sampler_cannot_serve_fails_alone_and_the_engine_goes_on(tiny, references):
    """Review finding: a sampler error used to leave a row without a token and freeze every later step."""
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    engine = _engine(folder)
    broken = Sampler.__call__

    def failing(self, logits, prompt, banned=(), generated=()):
        if self.params.seed == 13:
            raise ValueError("probabilities contain NaN")
        return broken(self, logits, prompt, banned, generated)
    good_out, good_done, good_cb = _collect()
    bad_out, bad_done, bad_cb = _collect()
    try:
        Sampler.__call__ = failing
        engine.submit(GenerationRequest(tokenizer.encode(PROMPTS[0]), SamplingParams.build(
            {"max_tokens": 24, "temperature": 0, "ignore_eos": True}), good_cb))
        engine.submit(GenerationRequest(tokenizer.encode(PROMPTS[1]), SamplingParams(seed=13), bad_cb))
        for _ in range(100):
            if good_done.is_set() and bad_done.is_set():
                break
            engine.step()
    finally:
        Sampler.__call__ = broken
    assert bad_out[-1].error and "NaN" in bad_out[-1].error and len([o for o in bad_out if o.error]) == 1
    assert [t for o in good_out for t in o.token_ids] == references[PROMPTS[0]]
    assert engine.idle() and engine.reserved_bytes == 0
    # odd but valid values are served: a tiny temperature is greedy, an out-of-vocabulary stop id bans nothing
    outputs, done, on_output = _collect()
    engine.submit(GenerationRequest(tokenizer.encode(PROMPTS[0]), SamplingParams.build(
        {"max_tokens": 24, "temperature": 1e-310, "min_tokens": 2, "stop_token_ids": [10 ** 6], "ignore_eos": True}), on_output))
    while not done.is_set():
        engine.step()
    assert [t for o in outputs for t in o.token_ids] == references[PROMPTS[0]]


def test_a_stop_string_inside_one_long_piece_is_found_and_unloading_refuses(tiny, references):
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    engine = _engine(folder)
    prompt = PROMPTS[3]
    full = tokenizer.decode(references[prompt])
    stop = full[2:4]
    outputs, done, on_output = _collect()
    engine.submit(GenerationRequest(tokenizer.encode(prompt), SamplingParams.build(
        {"max_tokens": 24, "temperature": 0, "stop": [stop, "x" * 40]}), on_output))
    while not done.is_set():
        engine.step()
    assert "".join(o.text for o in outputs) == full[: full.index(stop)]
    engine.start().stop()
    with pytest.raises(RequestRefused, match="being unloaded"):
        engine.submit(GenerationRequest(tokenizer.encode(prompt), SamplingParams(), lambda o: None))


def _run(engine, tokenizer, prompt, sampling):
    outputs, done, on_output = _collect()
    engine.submit(GenerationRequest(tokenizer.encode(prompt), SamplingParams.build(sampling), on_output))
    while not done.is_set():
        engine.step()
    return outputs


def test_stop_strings_at_the_limit_cut_where_the_scan_did_and_never_take_text_back(tiny, references):
    """64 stop strings of up to 256 characters (the default limits): decoys that share the text's
    beginnings (held back, then let go) and one that spans a token boundary; the text ends where
    the earliest stop string starts, and every streamed piece is final."""
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    engine = _engine(folder)
    prompt = PROMPTS[1]
    ids = references[prompt]
    full = tokenizer.decode(ids)
    boundaries = [len(tokenizer.decode(ids[:i])) for i in range(1, len(ids))]
    cut = next(b for b in boundaries if b > len(full) // 2 and full[b - 2:b + 2].strip() == full[b - 2:b + 2])
    stop = full[cut - 2: cut + 2]  # two characters of one token, two of the next
    assert stop not in full[: cut - 2]
    decoys = [full[i: i + 5] + "\x00" + "z" * 250 for i in range(0, 62)]  # each a prefix of the text, never whole
    stops = decoys + [stop, "q" * 256]
    assert len(stops) == 64 and max(map(len, stops)) == 256
    for include in (False, True):
        outputs = _run(engine, tokenizer, prompt, {"max_tokens": 24, "temperature": 0, "stop": stops,
                                                   "include_stop_str_in_output": include})
        expected = full[: full.index(stop) + (len(stop) if include else 0)]
        streamed = ""
        for output in outputs:
            streamed += output.text
            assert expected.startswith(streamed)  # nothing streamed is taken back
        assert streamed == expected and outputs[-1].finish_reason == "stop"
    with pytest.raises(RequestRefused, match="stop has 65 strings.*generation.max_stop_strings"):
        engine.submit(GenerationRequest(tokenizer.encode(prompt), SamplingParams(stop=stops + ["one more"]), lambda o: None))
    assert engine.idle() and engine.reserved_bytes == 0


def test_min_tokens_with_every_token_banned_is_refused_before_it_is_queued(tiny, references):
    """It used to reach the sampler and fail with numpy's "probabilities contain NaN"."""
    folder, _ = tiny
    tokenizer = BundleTokenizer(folder)
    engine = _engine(folder)
    vocab = engine.vocab_size
    assert vocab == tokenizer.vocab_size > 300
    everything = list(range(1, vocab))  # with EOS (id 0), the whole vocabulary
    with pytest.raises(RequestRefused, match=rf"min_tokens=2 leaves no token to sample.*all {vocab} tokens"):
        engine.submit(GenerationRequest(tokenizer.encode(PROMPTS[0]), SamplingParams(min_tokens=2, stop_token_ids=everything),
                                        lambda o: None))
    assert engine.idle() and engine.reserved_bytes == 0
    # one token left: it is what min_tokens forces out, sampled or greedy; then a stop id ends the text
    left = 7
    for temperature in (0, 1.0):
        outputs = _run(engine, tokenizer, PROMPTS[0], {"max_tokens": 6, "min_tokens": 3, "temperature": temperature,
                                                        "seed": 1, "stop_token_ids": [t for t in everything if t != left]})
        ids = [t for o in outputs for t in o.token_ids]
        assert ids[:3] == [left] * 3 and not outputs[-1].error
    # without min_tokens the same stop ids are only stop ids: the first token (the model's own, not banned) stops
    outputs = _run(engine, tokenizer, PROMPTS[0], {"max_tokens": 6, "temperature": 0, "stop_token_ids": everything})
    assert outputs[-1].finish_reason == "stop" and "".join(o.text for o in outputs) == ""
    assert references[PROMPTS[0]][0] in everything
