"""What one generation request may ask of a model: the stop-string matcher, the request
limits and the sampler's refusals (pure logic; the engine and the server are tested in
test_generation_engine.py and tests/e2e/test_generation.py)."""
from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

from portable_ep.generation.engine import (DEFAULT_MAX_STOP_LENGTH, DEFAULT_MAX_STOP_STRINGS, PROMPT_BYTES_PER_TOKEN,
                                           EngineLimits, RequestRefused)
from portable_ep.generation.sampling import Sampler, SamplingError, SamplingParams
from portable_ep.generation.stop import StopMatcher


# -- the scan the matcher replaced, kept as the reference ------------------------------
def naive_cut(text: str, before: int, stops):
    """(index, stop) of the stop string to cut at once ``text[before:]`` arrived, or None."""
    start = max(0, before - max(len(s) for s in stops) + 1)
    found = [(text.find(s, start), s) for s in stops]
    found = [(index, s) for index, s in found if index >= 0]
    return min(found) if found else None


def naive_held_back(text: str, stops) -> int:
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def _random_case(rng: random.Random):
    alphabet = rng.choice(["ab", "abc", "ab ", "aé日😀", "abcdefgh"])
    stops = list({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 8))})
    # pieces as a detokenizer hands them out: mostly a few characters, sometimes none, sometimes a run
    pieces = ["".join(rng.choice(alphabet + "x") for _ in range(rng.choice([0, 1, 1, 2, 3, 4, 9])))
              for _ in range(rng.randint(1, 40))]
    return stops, pieces


def test_stop_matcher_equals_the_naive_scan_on_random_texts():
    """Same cut (earliest start, then shortest) and same held-back text as the scan, piece by
    piece, with stop strings overlapping each other and spanning piece (token) boundaries."""
    rng = random.Random(24)
    spanning = 0
    for _ in range(4000):
        stops, pieces = _random_case(rng)
        matcher, text = StopMatcher(stops), ""
        for piece in pieces:
            before, text = len(text), text + piece
            found = matcher.feed(piece)
            expected = naive_cut(text, before, stops)
            assert (None if found is None else (found[0], text[found[0]:sum(found)])) == expected, (stops, pieces)
            if expected is not None:
                spanning += expected[0] < before
                break
            assert matcher.held_back == naive_held_back(text, stops), (stops, text)
    assert spanning > 500  # the random cases did exercise matches across pieces


def test_stop_matcher_picks_the_earliest_start_not_the_earliest_end():
    matcher = StopMatcher(["bc", "abcd", "ab"])
    assert matcher.feed("xabcd") == (1, 2)  # "ab" and "abcd" start at 1; "ab" ends first
    matcher = StopMatcher(["bc", "abcd"])
    assert matcher.feed("xa") is None and matcher.held_back == 1
    assert matcher.feed("bcd") == (1, 4)  # "bc" ends first, "abcd" starts first
    assert not StopMatcher([]) and StopMatcher([]).feed("anything") is None


def test_stop_matcher_cost_per_character_does_not_grow_with_the_number_of_stop_strings():
    """20,000 stop strings used to take a neighbour's stream from 0.22 s to 48 s: each token
    scanned all of them. Here the time per character with 4,000 strings stays within a small
    factor of the time with 4 (memory: a bigger automaton misses the cache more; measured ~3x),
    where the scan's is ~1000x."""
    rng = random.Random(5)
    text = "".join(rng.choice("abcdefgh ") for _ in range(20000))

    def per_piece(count: int) -> float:
        stops = ["".join(rng.choice("abcdefgh ") for _ in range(24)) for _ in range(count)]
        matcher = StopMatcher(stops)
        started = time.perf_counter()
        for i in range(0, len(text), 4):
            matcher.feed(text[i:i + 4])
            matcher.held_back
        return time.perf_counter() - started
    few = min(per_piece(4) for _ in range(3))
    many = min(per_piece(4000) for _ in range(3))
    assert many < 10 * few, (few, many)


# -- limits -----------------------------------------------------------------------------
def test_prompt_bytes_are_limited_from_the_context_and_configurable():
    limits = EngineLimits(context_length=512, kv_budget_bytes=1 << 20)
    assert limits.prompt_bytes == 512 * PROMPT_BYTES_PER_TOKEN
    limits.check_prompt_bytes(512 * PROMPT_BYTES_PER_TOKEN)
    with pytest.raises(RequestRefused, match=r"text_input is 16385 bytes, over this model's limit of 16384 bytes "
                                             r"\(512-token context; parameter generation.max_prompt_bytes\)"):
        limits.check_prompt_bytes(16385)
    EngineLimits(512, 1 << 20, max_prompt_bytes=0).check_prompt_bytes(1 << 30)  # 0: no limit
    with pytest.raises(RequestRefused, match="limit of 100 bytes"):
        EngineLimits(512, 1 << 20, max_prompt_bytes=100).check_prompt_bytes(101)


def test_stop_strings_are_limited_in_count_and_length():
    limits = EngineLimits(512, 1 << 20)
    at_limit = SamplingParams(stop=["x" * DEFAULT_MAX_STOP_LENGTH] * DEFAULT_MAX_STOP_STRINGS)
    limits.check_stops(at_limit)
    with pytest.raises(RequestRefused, match=f"stop has {DEFAULT_MAX_STOP_STRINGS + 1} strings, over this model's "
                                             f"limit of {DEFAULT_MAX_STOP_STRINGS} \\(parameter generation.max_stop_strings\\)"):
        limits.check_stops(SamplingParams(stop=["x"] * (DEFAULT_MAX_STOP_STRINGS + 1)))
    with pytest.raises(RequestRefused, match=f"stop string 1 is {DEFAULT_MAX_STOP_LENGTH + 1} characters.*"
                                             "generation.max_stop_length"):
        limits.check_stops(SamplingParams(stop=["ok", "y" * (DEFAULT_MAX_STOP_LENGTH + 1)]))
    EngineLimits(512, 1 << 20, max_stop_strings=0, max_stop_length=0).check_stops(SamplingParams(stop=["z" * 5000] * 500))


def test_the_parameters_json_is_limited_by_what_the_stop_limits_allow():
    limits = EngineLimits(512, 1 << 20)
    # the largest stop list the limits take, escaped at worst, passes the JSON size check
    widest = json.dumps({"stop": ["😀" * DEFAULT_MAX_STOP_LENGTH] * DEFAULT_MAX_STOP_STRINGS, "max_tokens": 16})
    limits.check_parameter_bytes(len(widest.encode()))
    with pytest.raises(RequestRefused, match=r"sampling parameters are .* bytes of JSON \(sampling_parameters and "
                                             r"request parameters\).*generation.max_stop_strings"):
        limits.check_parameter_bytes(limits.parameter_bytes + 1)
    assert EngineLimits(512, 1 << 20, max_stop_strings=0).parameter_bytes == 0  # no stop limit, no JSON limit


# -- the sampler ------------------------------------------------------------------------
def test_a_sampler_with_no_token_left_says_why_instead_of_nan():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    for params in (SamplingParams(min_tokens=2, seed=1), SamplingParams(temperature=0, min_tokens=2)):
        with pytest.raises(SamplingError, match=r"no token left to sample.*min_tokens=2"):
            Sampler(params)(logits, [], banned=np.array([0, 1, 2]))
    with pytest.raises(SamplingError, match="logits hold NaN"):
        Sampler(SamplingParams(seed=1))(np.array([0.0, np.nan, 1.0]), [])
    # one token left is sampled, whatever the draw
    assert {Sampler(SamplingParams(seed=s))(logits, [], banned=[0, 2, 7]) for s in range(20)} == {1}


def test_a_penalty_that_overflows_leaves_the_overflowing_tokens_not_nan():
    """repetition_penalty=1e-308 divides a positive logit to +inf: those tokens are the whole distribution."""
    logits = np.array([2.0, 1.0, -1.0, 3.0])
    params = SamplingParams(repetition_penalty=1e-308, seed=3)
    draws = {Sampler(params)(logits, [0, 1, 2]) for _ in range(50)}
    assert draws <= {0, 1} and draws
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=1e-308))(logits, [1]) == 1
    # a finite logit over a small temperature that overflows is the same limit
    assert Sampler(SamplingParams(temperature=1e-5, seed=0))(np.array([1e305, 0.0, 1e305]), []) in (0, 2)


# -- the Triton model's request parsing: sizes before the work ---------------------------
class _Tensor:
    def __init__(self, value):
        self.value = value

    def as_numpy(self):
        return np.array([self.value], dtype=np.object_)


class _Request:
    def __init__(self, inputs: dict, parameters: str = "{}"):
        self.inputs, self._parameters = inputs, parameters

    def parameters(self):
        return self._parameters


class _Pb:
    @staticmethod
    def get_input_tensor_by_name(request, name):
        return _Tensor(request.inputs[name]) if name in request.inputs else None


def test_sizes_are_checked_before_the_prompt_is_decoded_and_the_json_parsed():
    from portable_ep.python_backend.generation_model import BadRequest, parse_request

    limits = EngineLimits(context_length=64, kv_budget_bytes=1 << 20)  # 2048 prompt bytes
    # 1 MiB of bytes that are not UTF-8: refused by size, so never decoded (nor tokenized)
    with pytest.raises(RequestRefused, match=r"text_input is 1048576 bytes.*limit of 2048 bytes"):
        parse_request(_Request({"text_input": b"\xff" * (1 << 20)}), _Pb, limits)
    with pytest.raises(BadRequest, match="not UTF-8"):  # within the limit, the same bytes are decoded
        parse_request(_Request({"text_input": b"\xff" * 2048}), _Pb, limits)
    # JSON over the limit is refused unparsed (this one is not even JSON)
    broken = "{" * (limits.parameter_bytes + 1)
    with pytest.raises(RequestRefused, match="sampling parameters are .* bytes of JSON"):
        parse_request(_Request({"text_input": b"hi", "sampling_parameters": broken.encode()}), _Pb, limits)
    with pytest.raises(RequestRefused, match="bytes of JSON"):  # request parameters count too
        parse_request(_Request({"text_input": b"hi"}, json.dumps({"stop": "x" * limits.parameter_bytes})), _Pb, limits)
    parsed = parse_request(
        _Request({"text_input": "naïve".encode(), "sampling_parameters": b'{"stop": ["a", "b"], "min_tokens": 1}'}), _Pb, limits)
    assert (parsed.prompt, parsed.params.stop, parsed.params.min_tokens) == ("naïve", ["a", "b"], 1)
    assert parsed.extra_outputs == frozenset()
    # vLLM's optional outputs: asked for with their BOOL inputs (or request parameters), named by output
    parsed = parse_request(_Request({"text_input": b"hi", "return_finish_reason": True, "return_num_output_tokens": False},
                                    json.dumps({"return_logprobs": "true"})), _Pb, limits)
    assert parsed.extra_outputs == {"finish_reason", "logprobs"}


def test_limit_parameters_that_cannot_be_understood_fail_the_load_naming_them(tmp_path):
    from portable_ep.python_backend.generation_model import load_generator
    from portable_ep.python_backend.model_config import ModelConfigError, ServingConfig

    for key, value in (("generation.max_prompt_bytes", "-1"), ("generation.max_stop_strings", "many"),
                       ("generation.max_stop_length", "2.5")):
        config = ServingConfig("llm", 0, (), (), parameters={key: value})
        with pytest.raises(ModelConfigError, match=rf"parameter {key}='{value}' must be an integer >= 0 \(0: no limit\)"):
            load_generator(config, tmp_path)


def test_a_request_whose_last_send_fails_is_still_settled():
    """A client that went away makes the final send raise; the request must still leave the pending count,
    or the heartbeat would read an idle model as stalled and have a healthy stub killed."""
    from portable_ep.generation.engine import Output
    from portable_ep.python_backend.generation_model import ResponseStream

    class ClosedSender:
        def send(self, *args, **kwargs):
            raise RuntimeError("Response sender has been closed")

    class Pb:
        TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

        @staticmethod
        def Tensor(name, array):  # noqa: N802 - pb_utils' name
            return (name, array)

        @staticmethod
        def InferenceResponse(output_tensors=()):  # noqa: N802 - pb_utils' name
            return output_tensors

    done = []
    stream = ResponseStream(Pb, ClosedSender(), "hi", stream=True, exclude_input=True, on_done=done.append)
    with pytest.raises(RuntimeError, match="closed"):
        stream(Output(text="x", token_ids=[1], finish_reason="length"))
    assert len(done) == 1
