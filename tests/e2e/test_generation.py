"""A generative bundle served by a real tritonserver: vLLM's I/O, streaming, batching, refusals, check.

The bundle is `portable-ep export --task text-generation` of a tiny random Llama with a
real BPE tokenizer (tests/tiny_llm.py); expected texts are transformers' greedy output
recorded in the bundle's golden data.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from raw_http import post_json

pytest.importorskip("transformers", reason="the bundle is exported from transformers (export extra)")
pytestmark = pytest.mark.e2e

from portable_ep.exporters.repository import RepoOptions, add_to_repository  # noqa: E402
from portable_ep.generation.client import GenerationFailed, StreamingClient  # noqa: E402
from portable_ep.triton_process import TritonServer  # noqa: E402

MODELS = {
    # name: (provider chain, precision, extra parameters)
    "llm_openvino": ("openvino,cpu", "fp32", {}),
    "llm_cpu": ("cpu", "fp32", {}),
    "llm_npu_first": ("npu,cpu", "fp32", {}),
    "llm_small": ("cpu", "fp32", {"generation.max_context": "48", "generation.kv_cache_mb": "0.01",
                                  "generation.max_stop_strings": "2"}),
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tiny_llm import build_tiny_llama

    work = tmp_path_factory.mktemp("llm")
    build_tiny_llama(work / "hf")
    out = work / "bundle"
    # int4 of a random 64-wide model misses its budget (nothing to learn from it): fp32 and int8 only.
    result = subprocess.run([sys.executable, "-m", "portable_ep.cli", "export", str(work / "hf"), str(out),
                             "--task", "text-generation", "--precisions", "fp32,int8", "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return out


@pytest.fixture(scope="module")
def golden(bundle):
    return json.loads((bundle / "golden" / "generation.json").read_text())


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory, installed_backend_dir):
    repository = tmp_path_factory.mktemp("llm-repository")
    for name, (chain, precision, parameters) in MODELS.items():
        add_to_repository(bundle, repository, name, RepoOptions(providers=chain, precision=precision, parameters=parameters))
    with TritonServer(repository, backend_directory=installed_backend_dir) as running:
        yield running


def _post(server, path: str, body: dict):
    return post_json(f"http://{server.host}:{server.http_port}{path}", body)


def test_bundle_layout_and_config(bundle, server):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "text-generation"
    assert {(v["format"], v["precision"]) for v in manifest["variants"] if v["status"] == "ok"} >= {("onnx", "fp32"), ("openvino", "fp32")}
    assert (bundle / "tokenizer" / "tokenizer.json").is_file()
    config = (server.model_repository / "llm_cpu" / "config.pbtxt").read_text()
    assert "decoupled: true" in config and 'name: "text_input"' in config and 'name: "text_output"' in config
    verify = subprocess.run([sys.executable, "-m", "portable_ep.cli", "verify", str(bundle)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("model", ["llm_openvino", "llm_cpu"])
def test_grpc_stream_is_transformers_greedy_token_by_token(server, golden, model):
    with StreamingClient(server.grpc_url, model) as client:
        for prompt in golden["prompts"]:
            pieces = []
            result = client.generate(prompt["text"], {"max_tokens": len(prompt["greedy_ids"]), "temperature": 0},
                                     on_text=pieces.append)
            assert result.text == prompt["greedy_text"]
            assert len(pieces) > 1 and "".join(pieces) == result.text  # streamed, not one block
            assert result.ttft_s < result.total_s


def test_http_generate_and_generate_stream(server, golden):
    prompt = golden["prompts"][0]
    n = len(prompt["greedy_ids"])
    status, body = _post(server, "/v2/models/llm_openvino/generate",
                         {"text_input": prompt["text"], "parameters": {"max_tokens": n, "temperature": 0}})
    assert status == 200, body
    assert json.loads(body)["text_output"] == prompt["text"] + prompt["greedy_text"]  # vLLM: prompt prepended
    status, body = _post(server, "/v2/models/llm_openvino/generate",
                         {"text_input": prompt["text"], "exclude_input_in_output": True,
                          "parameters": {"max_tokens": n, "temperature": 0}})
    assert json.loads(body)["text_output"] == prompt["greedy_text"]
    status, body = _post(server, "/v2/models/llm_cpu/generate_stream",
                         {"text_input": prompt["text"], "stream": True, "parameters": {"max_tokens": n, "temperature": 0}})
    assert status == 200, body
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    assert len(events) > 1 and "".join(e["text_output"] for e in events) == prompt["greedy_text"]


def test_concurrent_streams_each_get_their_own_text(server, golden):
    """Continuous batching: 6 streams at once on one instance, each equal to its greedy text alone."""
    prompts = golden["prompts"] * 2
    results, errors = [None] * len(prompts), []

    def one(i, prompt):
        try:
            with StreamingClient(server.grpc_url, "llm_cpu") as client:
                time.sleep(0.01 * i)  # join while the others decode
                results[i] = client.generate(prompt["text"], {"max_tokens": len(prompt["greedy_ids"]), "temperature": 0})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for result, prompt in zip(results, prompts):
        assert result.text == prompt["greedy_text"]


def test_bad_requests_are_refused_alone_with_the_reason(server, bundle, golden):
    prompt = golden["prompts"][0]["text"]
    vocab = json.loads((bundle / "manifest.json").read_text())["decoder"]["vocab_size"]
    cases = [
        ("llm_cpu", prompt, {"max_tokens": 0}, "max_tokens must be at least 1"),
        ("llm_cpu", prompt, {"temperatur": 0}, "unknown sampling parameter.*temperatur"),
        ("llm_cpu", prompt, {"top_p": 2}, "top_p"),
        ("llm_cpu", "", {"max_tokens": 4}, "text_input is empty"),
        ("llm_small", "word " * 60, {"max_tokens": 4}, r"prompt is \d+ tokens and the model's context is 48"),
        ("llm_small", "word", {"max_tokens": 40}, "KV cache"),
        # limits checked before the expensive work, each naming its parameter
        ("llm_small", "word " * 400, {"max_tokens": 4},
         r"text_input is 2000 bytes, over this model's limit of 1536 bytes \(48-token context; parameter generation.max_prompt_bytes\)"),
        ("llm_small", "word", {"max_tokens": 4, "stop": ["a", "b", "c"]},
         r"stop has 3 strings, over this model's limit of 2 \(parameter generation.max_stop_strings\)"),
        ("llm_cpu", prompt, {"stop": ["x"] * 65}, r"stop has 65 strings, over this model's limit of 64"),
        ("llm_cpu", prompt, {"stop": ["ok", "x" * 257]}, r"stop string 1 is 257 characters.*generation.max_stop_length"),
        ("llm_cpu", prompt, {"max_tokens": 4, "min_tokens": 2, "stop_token_ids": list(range(vocab))},
         rf"min_tokens=2 leaves no token to sample.*all {vocab} tokens"),
    ]
    # the limits in force are in the load's log line, configured ones and derived ones
    assert "per request: prompt 1536 bytes, stop strings 2 of 256 characters" in server.log_text()
    for model, text, sampling, words in cases:
        with StreamingClient(server.grpc_url, model) as client:
            with pytest.raises(GenerationFailed) as info:
                client.generate(text, sampling)
            assert re.search(words, str(info.value)), (words, str(info.value))
    # ... and the model still serves
    with StreamingClient(server.grpc_url, "llm_cpu") as client:
        first = golden["prompts"][0]
        assert client.generate(first["text"], {"max_tokens": len(first["greedy_ids"]), "temperature": 0}).text == first["greedy_text"]


def test_a_cancelled_stream_frees_its_sequence(server, golden):
    import tritonclient.grpc as grpcclient

    from portable_ep.generation.client import generation_inputs

    def cancel_one_stream() -> bool:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        got = []
        client.start_stream(callback=lambda result, error: got.append((result, error)))
        # As many tokens as the context leaves (~0.2 s on this tiny model): the cancel must arrive mid-stream.
        client.async_stream_infer("llm_cpu", generation_inputs(grpcclient, golden["prompts"][1]["text"], True,
                                                               {"max_tokens": 480, "ignore_eos": True, "temperature": 0}))
        deadline = time.time() + 30
        while not got and time.time() < deadline:
            time.sleep(0.005)
        assert got and got[0][1] is None, got[:1]
        client.stop_stream(cancel_requests=True)
        client.close()
        deadline = time.time() + 10
        while server.log_text().count("request cancelled by the client") < cancelled + 1 and time.time() < deadline:
            time.sleep(0.1)
        return server.log_text().count("request cancelled by the client") > cancelled

    # A machine busy with other work may let the whole stream finish before the cancel reaches the
    # server (nothing left to cancel): that try proves nothing either way, so try again.
    cancelled = server.log_text().count("request cancelled by the client")
    assert any(cancel_one_stream() for _ in range(3)), "no stream was cancelled in 3 tries"
    with StreamingClient(server.grpc_url, "llm_cpu") as fresh:
        first = golden["prompts"][0]
        assert fresh.generate(first["text"], {"max_tokens": len(first["greedy_ids"]), "temperature": 0}).text == first["greedy_text"]


def test_npu_says_why_it_cannot_and_the_chain_falls_back(server, golden):
    log = server.log_text()
    assert "skipped provider 'npu'" in log and "generative models are not served on the NPU" in log
    with StreamingClient(server.grpc_url, "llm_npu_first") as client:
        first = golden["prompts"][0]
        assert client.generate(first["text"], {"max_tokens": len(first["greedy_ids"]), "temperature": 0}).text == first["greedy_text"]


def test_sampling_is_seeded_and_stop_strings_cut_the_text(server, golden):
    prompt = golden["prompts"][1]
    with StreamingClient(server.grpc_url, "llm_openvino") as client:
        a = client.generate(prompt["text"], {"max_tokens": 16, "temperature": 0.9, "top_k": 20, "seed": 5})
        b = client.generate(prompt["text"], {"max_tokens": 16, "temperature": 0.9, "top_k": 20, "seed": 5})
        assert a.text == b.text
        stop = prompt["greedy_text"][5:8]
        cut = client.generate(prompt["text"], {"max_tokens": len(prompt["greedy_ids"]), "temperature": 0, "stop": [stop]})
        assert cut.text == prompt["greedy_text"][: prompt["greedy_text"].index(stop)]


def test_check_reports_ttft_itl_and_tokens_per_second(server, bundle, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "portable_ep.cli", "check", "--url", server.grpc_url, "--model",
                             "llm_openvino", "--bundle", str(server.model_repository / "llm_openvino" / "1"),
                             "--metrics-url", server.metrics_url, "--concurrency", "1,4", "--max-tokens", "24",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"]["passed"] and all(row["identical"] for row in report["accuracy"]["greedy"])
    assert report["accuracy"]["teacher_forced"]["top1_agreement"] == pytest.approx(1.0, abs=0.01)
    levels = report["latency"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    for lv in levels:
        assert lv["errors"] == 0 and lv["tokens_per_s"] > 0 and lv["ttft_p50_ms"] > 0 and lv["itl_p50_ms"] > 0
        assert lv["inprocess_tokens_per_s"] > 0
    assert "TTFT p50 ms" in (out / "report.md").read_text() and (out / "report.png").is_file()
    merged = subprocess.run([sys.executable, "-m", "portable_ep.cli", "check", "merge", str(out / "report.json"),
                             "--out", str(tmp_path / "matrix")], capture_output=True, text=True)
    assert merged.returncode == 0 and "tokens/s" in merged.stdout



# A hostile client, in a process of its own as it would be on another machine, sending its kind of
# request over and over until its stdin closes; it prints "ready", then one line per answer.
HOSTILE_CLIENT = r"""
import json, random, sys, threading
from portable_ep.generation.client import GenerationFailed, StreamingClient

url, kind, prompt = sys.argv[1:4]
rng = random.Random(0)
# the most stop strings of the longest length the defaults take, none matching: every token used to
# scan them all, and again for the text to hold back
stops = ["".join(rng.choice("abcdefghij ") for _ in range(256)) for _ in range(64)]
huge = "The capital of France is Paris. " * (8 * 1024 * 1024 // 32)  # 8 MiB of prose, ~2.8 M tokens
at_limit = huge[: 512 * 32]  # exactly the byte limit: tokenized (~3.7 k tokens), then refused by tokens
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
with StreamingClient(url, "llm_cpu") as client:
    print("ready", flush=True)
    while not done.is_set():
        for text, sampling in ([(prompt, {"max_tokens": 500, "ignore_eos": True, "temperature": 0, "stop": stops})]
                               if kind == "stops" else [(huge, {"max_tokens": 4}), (at_limit, {"max_tokens": 4})]):
            try:
                answer = "served " + str(len(client.generate(text, sampling, stream=False).text))
            except GenerationFailed as exc:
                answer = "refused " + str(exc)
            print(json.dumps(answer), flush=True)
            done.wait(0.05)
"""


def _neighbour_s(server, prompt: dict, runs: int = 5) -> float:
    """Median seconds of a 200-token greedy stream (about 0.1 s alone on this tiny model)."""
    times = []
    with StreamingClient(server.grpc_url, "llm_cpu") as client:
        for _ in range(runs):
            result = client.generate(prompt["text"], {"max_tokens": 200, "temperature": 0, "ignore_eos": True})
            assert result.text.startswith(prompt["greedy_text"][:20]), result.text
            times.append(result.total_s)
    return sorted(times)[runs // 2]


def _stub_peak_rss_mib(server, model: str) -> float:
    """Peak resident memory (VmHWM) of the python stub serving ``model``, read from /proc."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        parent = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
        if (parent == server.process.pid and b"triton_python_backend_stub" in cmdline[0]
                and any(f"/{model}/".encode() in arg for arg in cmdline)):
            return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024
    raise AssertionError(f"no python stub of {model} under tritonserver {server.process.pid}")


def _beside_hostile(server, kind: str, golden) -> tuple:
    """(neighbour's median seconds, the hostile client's answers) with the client running throughout."""
    hostile = subprocess.Popen([sys.executable, "-c", HOSTILE_CLIENT, server.grpc_url, kind, golden["prompts"][1]["text"]],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hostile.stdout.readline().strip() == "ready"
        first = json.loads(hostile.stdout.readline())  # it is being answered: the neighbour runs beside it
        beside = _neighbour_s(server, golden["prompts"][0])
    finally:
        answers, _ = hostile.communicate("", timeout=120)
    return beside, [first] + [json.loads(line) for line in answers.splitlines()]


def test_a_hostile_request_does_not_slow_its_neighbours_stream(server, golden):
    """A stream's latency beside requests that try to take the model's one generation thread or
    its memory stays within 2x its latency alone. Before the limits: 20,000 stop strings took a
    neighbour from 0.22 s to 48 s; an 8 MB prompt, tokenized whole before the context check,
    from 0.06 s to 12.8 s (and +1.1 GB in the stub). Measured with the previous code, this test's
    clients took the neighbour to 4x (stop strings) and 6x (with 1 MiB prompts only)."""
    neighbour = golden["prompts"][0]
    _neighbour_s(server, neighbour, runs=1)  # warm
    for kind in ("stops", "prompts"):
        peak_before = _stub_peak_rss_mib(server, "llm_cpu")
        # Three tries, each against the latency alone just before it: other load on a shared 2-core
        # machine has taken one measurement to 1.95x; a hostile request slows every try (the previous
        # code's took the neighbour to 4-6x).
        for attempt in range(3):
            alone = _neighbour_s(server, neighbour)
            beside, answers = _beside_hostile(server, kind, golden)
            print(f"neighbour's 200 tokens: {alone:.3f} s alone, {beside:.3f} s beside {len(answers)} hostile {kind} requests")
            if beside <= 2 * alone:
                break
        grown = _stub_peak_rss_mib(server, "llm_cpu") - peak_before
        print(f"the stub's peak memory grew {grown:.0f} MiB")
        if kind == "stops":
            assert all(a.startswith("served ") and int(a.split()[1]) > 100 for a in answers), answers
        else:
            assert any("generation.max_prompt_bytes" in a for a in answers), answers
            assert any(re.search(r"prompt is \d+ tokens and the model's context is 512", a) for a in answers), answers
            assert all(a.startswith("refused ") for a in answers), answers
            assert grown < 128, f"8 MiB prompts grew the stub's peak memory by {grown:.0f} MiB"
        assert beside <= 2 * alone, (kind, alone, beside)
