"""The generative model's Triton contract as the ecosystem's clients read it, through a real tritonserver.

- a chat template rendered by the client (BOS included) gets the source's real greedy answer:
  transformers' ``apply_chat_template`` + ``generate``, not a prompt with two BOS tokens;
- vLLM's optional ``return_*`` inputs and their outputs, streamed and not, over gRPC and HTTP;
- refusals are INVALID_ARGUMENT / 400 and Triton counts them as failures (its statistics and
  ``nv_inference_request_failure``), a good request as a success;
- structured output (``guided_*``) validates whenever it finishes with ``stop``;
- a reload with another precision leaves one ``portable_ep_model_info`` series.

The bundle is a tiny random Llama whose tokenizer adds BOS, like Llama's and the SmolLM2
GGUF's, and whose chat template begins with that token (tests/tiny_llm.py).
"""
from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from raw_http import post_json

pytest.importorskip("transformers", reason="the bundle is exported from transformers (export extra)")
pytest.importorskip("llguidance", reason="structured output needs the llm extra")
jsonschema = pytest.importorskip("jsonschema", reason="answers are validated with jsonschema (dev extra)")
pytestmark = pytest.mark.e2e

from portable_ep.exporters.repository import RepoOptions, add_to_repository  # noqa: E402
from portable_ep.generation.client import RETURN_INPUTS, StreamingClient, generation_inputs  # noqa: E402
from portable_ep.triton_process import TritonServer  # noqa: E402

MODEL = "llm"
EXTRA = RETURN_INPUTS
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "rank"],
          "properties": {"city": {"enum": ["Paris", "Lyon", "Nice"]}, "rank": {"type": "integer", "minimum": 1, "maximum": 9}}}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from tiny_llm import build_tiny_llama

    folder = tmp_path_factory.mktemp("llm-bos") / "hf"
    return folder, build_tiny_llama(folder, add_bos=True)


@pytest.fixture(scope="module")
def bundle(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("llm-bos-bundle") / "bundle"
    result = subprocess.run([sys.executable, "-m", "portable_ep.cli", "export", str(source[0]), str(out), "--task",
                             "text-generation", "--precisions", "fp32,int8", "--formats", "onnx", "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory, installed_backend_dir):
    repository = tmp_path_factory.mktemp("llm-contract-repository")
    add_to_repository(bundle, repository, MODEL, RepoOptions(providers="cpu", precision="fp32"))
    with TritonServer(repository, backend_directory=installed_backend_dir,
                      extra_args=["--model-control-mode=explicit", "--load-model=*"]) as running:
        yield running


@pytest.fixture(scope="module")
def chat_tokenizer(bundle):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundle / "tokenizer")


def _stream(server, prompt: str, sampling: dict, stream: bool = True, extra=EXTRA, exclude_input=None,
            grpc_error: bool = False):
    """Every (result, error) of one request over Triton's gRPC stream, with the return_* inputs set.

    ``grpc_error``: Triton's ``triton_grpc_error`` stream header, under which an error ends the
    stream with its gRPC status code (without it a stream carries the error's message only)."""
    import tritonclient.grpc as grpcclient

    got: "queue.Queue" = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)),
                        headers={"triton_grpc_error": "true"} if grpc_error else None)
    inputs = generation_inputs(grpcclient, prompt, stream, sampling, exclude_input, returns=extra)
    client.async_stream_infer(MODEL, inputs, enable_empty_final_response=True)
    responses = []
    try:
        while True:
            result, error = got.get(timeout=60)
            responses.append((result, error))
            if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
                return responses
    finally:
        client.stop_stream()
        client.close()


def _outputs(result) -> dict:
    names = [o.name for o in result.get_response().outputs]
    return {name: result.as_numpy(name) for name in names}


def _chat(chat_tokenizer, question: str):
    """(rendered text, transformers' apply_chat_template ids) for one user message."""
    messages = [{"role": "user", "content": question}]
    text = chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = chat_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return text, ids


def test_a_client_rendered_chat_template_gets_the_sources_greedy_answer(server, source, bundle, chat_tokenizer):
    import torch

    model = source[1]
    for question in ("What is the capital of France?", "Name three fruits that are red."):
        text, ids = _chat(chat_tokenizer, question)
        # Without the rule the server would see BOS twice: the template's and the post-processor's.
        assert chat_tokenizer(text)["input_ids"][:2] == [0, 0] and ids[0] == 0 and ids[1] != 0
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
        expected = chat_tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
        with StreamingClient(server.grpc_url, MODEL) as client:
            served = client.generate(text, {"max_tokens": 20, "temperature": 0, "ignore_eos": True})
        assert served.text == expected, question
        final = _outputs(_stream(server, text, {"max_tokens": 1, "temperature": 0})[-1][0])
        assert int(final["num_input_tokens"][0]) == len(ids)
    golden = json.loads((bundle / "golden" / "generation.json").read_text())
    assert all(p["prompt_ids"][:2] != [0, 0] for p in golden["prompts"])


def test_vllm_optional_outputs_streamed_and_not(server, chat_tokenizer):
    text, ids = _chat(chat_tokenizer, "Write a haiku about the ocean.")
    sampling = {"max_tokens": 8, "temperature": 0, "ignore_eos": True, "logprobs": 2}
    responses = _stream(server, text, sampling)
    assert all(error is None for _, error in responses), responses
    outputs = [_outputs(result) for result, _ in responses]
    assert len(outputs) > 1
    assert [o["finish_reason"][0].decode() for o in outputs] == ["None"] * (len(outputs) - 1) + ["length"]
    assert outputs[-1]["finish_reason"].dtype == np.object_ and outputs[-1]["num_input_tokens"].dtype == np.uint32
    assert {int(o["num_input_tokens"][0]) for o in outputs} == {len(ids)}
    assert sum(int(o["num_output_tokens"][0]) for o in outputs) == 8  # per response: tokens since the last one
    entries = [entry for o in outputs for entry in json.loads(o["logprobs"][0])]
    assert len(entries) == 8 and all(len(entry) == 2 for entry in entries)  # greedy: sampled = top-1, plus one
    tokens = [max(entry, key=lambda k: entry[k]["logprob"]) for entry in entries]
    sampled = [entry[token] for entry, token in zip(entries, tokens)]
    assert all(e["rank"] == 1 for e in sampled)
    # each token's own text (a byte-level token may hold part of a character: decoded alone, as vLLM does)
    assert [e["decoded_token"] for e in sampled] == [chat_tokenizer.decode([int(t)]) for t in tokens]
    assert chat_tokenizer.decode([int(t) for t in tokens]) == "".join(o["text_output"][0].decode() for o in outputs)
    cumulative = outputs[-1]["cumulative_logprob"]
    assert cumulative.dtype == np.float32 and abs(float(cumulative[0]) - sum(e["logprob"] for e in sampled)) < 1e-3

    # not streamed: one response carrying the totals; a stop token ends it with "stop"
    first = json.loads(outputs[0]["logprobs"][0])
    first_token = int(max(first[0], key=lambda k: first[0][k]["logprob"]))
    (result, error), = _stream(server, text, {"max_tokens": 8, "temperature": 0, "stop_token_ids": [first_token]},
                               stream=False, exclude_input=True)
    assert error is None
    single = _outputs(result)
    assert single["finish_reason"][0] == b"stop" and int(single["num_output_tokens"][0]) == 1
    assert single["logprobs"][0] == b"null"  # no logprobs asked in the sampling parameters

    # Triton's /generate: the same inputs as JSON fields, the outputs as fields of the answer
    status, body = _post(server, f"/v2/models/{MODEL}/generate",
                         {"text_input": text, "return_finish_reason": True, "return_num_output_tokens": True,
                          "exclude_input_in_output": True, "parameters": {"max_tokens": 5, "temperature": 0, "ignore_eos": True}})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["finish_reason"] in ("length", ["length"]) and answer["num_output_tokens"] in (5, [5])


def _post(server, path: str, body: dict):
    return post_json(f"http://{server.host}:{server.http_port}{path}", body)


def _stats(server) -> dict:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]["inference_stats"]
    finally:
        client.close()
    return {kind: int(stats.get(kind, {}).get("count", 0)) for kind in ("success", "fail")}


def _failures_metric(server) -> int:
    """nv_inference_request_failure of the model, summed over its series (Triton labels them by reason)."""
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in server.metrics_text().splitlines()
               if line.startswith("nv_inference_request_failure{") and f'model="{MODEL}"' in line)


def test_refusals_are_invalid_argument_and_triton_counts_them_as_failures(server):
    before, failures_before = _stats(server), _failures_metric(server)
    cases = [({"max_tokens": 0}, "max_tokens must be at least 1"),
             ({"temperatur": 0}, "unknown sampling parameter.*temperatur"),
             ({"guided_regex": "(("}, "guided_regex cannot be compiled"),
             ({"logprobs": 50}, "logprobs must be between 0 and 20")]
    for i, (sampling, words) in enumerate(cases):
        (result, error), = _stream(server, "hello", sampling, grpc_error=i % 2 == 0)
        assert error is not None and re.search(words, error.message()), (words, error)
        if i % 2 == 0:  # the code travels when the client asks Triton for gRPC errors on the stream
            assert str(error.status()) == "StatusCode.INVALID_ARGUMENT", error.status()
    status, body = _post(server, f"/v2/models/{MODEL}/generate", {"text_input": "hello", "parameters": {"top_p": 2}})
    assert status == 400 and "top_p" in body, (status, body)
    deadline = time.time() + 10
    while _failures_metric(server) < failures_before + 5 and time.time() < deadline:
        time.sleep(0.2)  # Triton's metrics are polled every few seconds
    after = _stats(server)
    assert after["fail"] - before["fail"] == 5 and after["success"] == before["success"]
    assert _failures_metric(server) - failures_before == 5
    with StreamingClient(server.grpc_url, MODEL) as client:  # the model serves on, and counts a success
        assert client.generate("hello", {"max_tokens": 3, "ignore_eos": True}).text
    assert _stats(server)["success"] == before["success"] + 1
    log = server.log_text()
    assert "Traceback" not in log
    # Triton's log names each refusal in one line
    assert [line for line in log.splitlines() if "request refused: max_tokens must be at least 1" in line]
    print("\n".join(line for line in log.splitlines() if "request refused" in line))


def test_structured_output_validates_whenever_it_stops(server, chat_tokenizer):
    text, _ = _chat(chat_tokenizer, "Which city? Answer in JSON.")
    stopped = 0
    for seed in range(4):
        responses = _stream(server, text, {"max_tokens": 40, "temperature": 1.0, "seed": seed, "guided_json": SCHEMA})
        assert all(error is None for _, error in responses), responses
        outputs = [_outputs(result) for result, _ in responses]
        answer = "".join(o["text_output"][0].decode() for o in outputs)
        reason = outputs[-1]["finish_reason"][0].decode()
        if reason == "stop":
            jsonschema.validate(json.loads(answer), SCHEMA)
            stopped += 1
        else:
            assert reason == "length"
    assert stopped >= 2
    # the OpenAI-style schema as JSON text, and a choice, not streamed
    (result, error), = _stream(server, text, {"max_tokens": 8, "temperature": 1.0, "seed": 1,
                                              "guided_choice": ["yes", "no", "maybe"]}, stream=False, exclude_input=True)
    assert error is None and _outputs(result)["text_output"][0].decode() in ("yes", "no", "maybe")
    (result, error), = _stream(server, text, {"max_tokens": 3, "temperature": 0, "guided_json": json.dumps(SCHEMA)},
                               stream=False, exclude_input=True)
    assert error is None and _outputs(result)["finish_reason"][0] == b"length"  # cut short says so


def _info_series(server) -> list:
    return [line for line in server.metrics_text().splitlines()
            if line.startswith("portable_ep_model_info{") and f'model="{MODEL}"' in line]


def test_a_reload_with_another_precision_leaves_one_model_info_series(server):
    import tritonclient.grpc as grpcclient

    from portable_ep.exporters.triton_config import config_to_pbtxt, parse_pbtxt

    assert len(_info_series(server)) == 1 and 'precision="fp32"' in _info_series(server)[0]
    path = server.model_repository / MODEL / "config.pbtxt"
    config = parse_pbtxt(path.read_text())
    config.parameters["precision"].string_value = "int8"
    path.write_text(config_to_pbtxt(config))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.load_model(MODEL)  # a reload: the new instance loads, then the old one is unloaded
    finally:
        client.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        series = _info_series(server)
        if len(series) == 1 and 'precision="int8"' in series[0]:
            break
        time.sleep(0.5)
    assert len(series) == 1 and 'precision="int8"' in series[0], series
    with StreamingClient(server.grpc_url, MODEL) as streaming:
        assert streaming.generate("hello", {"max_tokens": 3, "ignore_eos": True}).text
