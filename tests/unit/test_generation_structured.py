"""Structured output, log-probabilities and the BOS rule in the engine, on a real tiny random Llama.

A random-weight model writes schema-valid JSON only through the grammar's mask: every
answer that finishes with ``stop`` must parse and validate; one cut by ``max_tokens`` must
say ``length``. Sequences without a grammar decode beside them unchanged.
"""
from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest

from portable_ep.backends import LoadRequest, find_model_artifacts
from portable_ep.backends.registry import default_registry
from portable_ep.generation.decoder import Decoder
from portable_ep.generation.engine import EngineLimits, GenerationEngine, GenerationRequest
from portable_ep.generation.grammar import GrammarCompiler, tokenizer_json_text
from portable_ep.generation.sampling import SamplingError, SamplingParams
from portable_ep.generation.tokenizer import BundleTokenizer, drop_repeated_bos

pytest.importorskip("torch", reason="the tiny model is built with transformers (export extra)")
pytest.importorskip("llguidance", reason="structured output needs the llm extra")
jsonschema = pytest.importorskip("jsonschema", reason="answers are validated with jsonschema (dev extra)")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "count", "ok"],
          "properties": {"name": {"type": "string", "maxLength": 6}, "count": {"type": "integer", "minimum": 0, "maximum": 99},
                         "ok": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_llm import export_tiny_llama

    return export_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))[0]


@pytest.fixture(scope="module")
def engine(tiny):
    session = default_registry().get("cpu").load(LoadRequest(artifacts=find_model_artifacts(tiny)))
    tokenizer = BundleTokenizer(tiny)
    grammars = GrammarCompiler(tokenizer_json_text(tiny), tokenizer.vocab_size, [0])
    return GenerationEngine(Decoder(session), tokenizer, [0], EngineLimits(256, 64 << 20, 8), grammars=grammars)


def _generate(engine, prompts_and_params, want_logprob=False):
    """Run requests together through the engine's steps; each one's (text, outputs)."""
    results = []
    for prompt, sampling in prompts_and_params:
        outputs, done = [], threading.Event()

        def on_output(output, outputs=outputs, done=done):
            outputs.append(output)
            if output.finish_reason or output.error:
                done.set()
        engine.submit(GenerationRequest(engine.tokenizer.encode(prompt), SamplingParams.build(sampling), on_output,
                                        want_logprob=want_logprob))
        results.append((outputs, done))
    while not all(done.is_set() for _, done in results):
        engine.step()
    return [("".join(o.text for o in outputs), outputs) for outputs, _ in results]


def test_guided_json_answers_validate_and_length_says_length(engine):
    prompts = ["The capital of France is", "Once upon a time", "hello world", "word word word"]
    requests = [(p, {"max_tokens": 64, "temperature": 1.0, "seed": i, "guided_json": SCHEMA}) for i, p in enumerate(prompts)]
    requests.append((prompts[0], {"max_tokens": 3, "temperature": 0, "guided_json": json.dumps(SCHEMA)}))
    free = (prompts[0], {"max_tokens": 12, "temperature": 0, "ignore_eos": True})  # no grammar, same batch
    results = _generate(engine, requests + [free])
    finished = 0
    for text, outputs in results[:-2]:
        assert not outputs[-1].error, outputs[-1].error
        if outputs[-1].finish_reason == "stop":
            jsonschema.validate(json.loads(text), SCHEMA)
            finished += 1
        else:
            assert outputs[-1].finish_reason == "length"
    assert finished >= 2, [r[0] for r in results]  # the mask closes the object well within 64 tokens
    text, outputs = results[-2]
    assert outputs[-1].finish_reason == "length" and len([t for o in outputs for t in o.token_ids]) == 3
    with pytest.raises(ValueError):
        json.loads(text)  # cut short: says length, and is not complete JSON
    alone = _generate(engine, [free])[0][0]
    assert results[-1][0] == alone  # a sequence without a grammar is untouched by its neighbours' masks


def test_guided_regex_choice_and_json_object(engine):
    prompt = "Numbers: 1, 2, 3"
    results = _generate(engine, [
        (prompt, {"max_tokens": 16, "temperature": 1.0, "seed": 3, "guided_regex": "[0-9]{3}-[a-z]{2}"}),
        (prompt, {"max_tokens": 16, "temperature": 1.0, "seed": 4, "guided_choice": ["Paris", "London", "naïve café"]}),
        (prompt, {"max_tokens": 48, "temperature": 0, "guided_json_object": True}),
    ])
    (regex_text, regex_out), (choice_text, choice_out), (object_text, object_out) = results
    assert regex_out[-1].finish_reason == "stop" and re.fullmatch("[0-9]{3}-[a-z]{2}", regex_text), regex_text
    assert choice_out[-1].finish_reason == "stop" and choice_text in ("Paris", "London", "naïve café"), choice_text
    if object_out[-1].finish_reason == "stop":
        assert isinstance(json.loads(object_text), dict)
    else:
        assert object_out[-1].finish_reason == "length" and object_text.startswith("{")


def test_bad_grammars_are_refused_naming_the_parameter(engine):
    for sampling, words in [({"guided_regex": "(("}, "guided_regex cannot be compiled"),
                            ({"guided_json": {"type": "nonsense"}}, "guided_json cannot be compiled")]:
        with pytest.raises(SamplingError, match=words):
            engine.submit(GenerationRequest([1, 2], SamplingParams.build(sampling), lambda o: None))
    assert engine.idle() and engine.reserved_bytes == 0
    with pytest.raises(SamplingError, match="at most one of"):
        SamplingParams.build({"guided_regex": "a", "guided_choice": ["a"]})


def test_logprobs_are_the_models_own_and_add_up(engine, tiny):
    prompt = "The capital of France is"
    (text, outputs), = _generate(engine, [(prompt, {"max_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": 2})])
    entries = [entry for o in outputs for entry in o.logprobs]
    ids = [t for o in outputs for t in o.token_ids]
    assert len(entries) == len(ids) == 6
    # greedy: the sampled token is the most likely, rank 1, and the top-2 alternatives are listed
    logits = Decoder(engine.decoder.session).teacher_forced_logits(engine.tokenizer.encode(prompt) + ids)
    prompt_len = len(engine.tokenizer.encode(prompt))
    total = 0.0
    for i, (token, entry) in enumerate(zip(ids, entries)):
        row = logits[prompt_len - 1 + i].astype(np.float64)
        expected = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        value, rank = entry[token]
        assert rank == 1 and abs(value - expected[token]) < 1e-3
        assert len(entry) == 2  # the sampled token is the top one: it and one alternative
        total += value
    assert abs(outputs[-1].cumulative_logprob - total) < 1e-6 and total < 0


def test_a_second_bos_is_dropped_only_when_the_text_begins_with_it():
    assert drop_repeated_bos([1, 1, 5, 6], "<s>hi", 1, "<s>") == [1, 5, 6]
    assert drop_repeated_bos([1, 5, 6], "<s>hi", 1, "<s>") == [1, 5, 6]  # the tokenizer adds none: nothing to drop
    assert drop_repeated_bos([1, 1, 5], "hi <s>", 1, "<s>") == [1, 1, 5]  # not at the start: the text's own choice
    assert drop_repeated_bos([1, 1, 5], "<s>hi", None, None) == [1, 1, 5]  # no BOS known


def test_the_names_tritons_openai_frontend_forwards_are_understood():
    """Triton's OpenAI frontend (vLLM mode) passes the OpenAI request's fields on as sampling parameters."""
    chat_defaults = {"logprobs": False, "n": 1, "temperature": 1, "top_p": 1, "frequency_penalty": 0,
                     "presence_penalty": 0, "max_completion_tokens": 7}
    params = SamplingParams.from_request(json.dumps(chat_defaults))
    assert (params.logprobs, params.max_tokens) == (None, 7)
    assert SamplingParams.from_request(json.dumps({"logprobs": True, "top_logprobs": 3})).logprobs == 3
    assert SamplingParams.from_request(json.dumps({"logprobs": True})).logprobs == 0
    assert SamplingParams.from_request(json.dumps({"max_tokens": 5, "max_completion_tokens": 9})).max_tokens == 5
    guided = SamplingParams.from_request(json.dumps({"guided_decoding": {"json": SCHEMA, "backend": None}})).guided
    assert guided[0] == "guided_json" and json.loads(guided[1]) == SCHEMA
    for sampling, words in [({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
                            ({"guided_decoding": {"grammar": "x"}}, "guided_decoding.grammar is not supported"),
                            ({"guided_decoding": {"json": SCHEMA, "regex": "a"}}, "at most one of")]:
        with pytest.raises(SamplingError, match=words):
            SamplingParams.from_request(json.dumps(sampling))
