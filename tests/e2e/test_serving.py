"""The central path, end to end: tritonclient → real tritonserver → portable_ep backend → provider."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest

from inputs import bow_input, mlp_input
from portable_ep.client import infer_once, make_client, make_inputs
from portable_ep.metrics_text import parse_series, served_providers

pytestmark = pytest.mark.e2e

FP32_TOLERANCE = 1e-5


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model, provider", [("mlp_cpu", "cpu"), ("mlp_openvino", "openvino")])
def test_served_outputs_match_direct_onnxruntime(server, reference_run, protocol, model, provider):
    url = server.http_url if protocol == "http" else server.grpc_url
    for batch, seed in ((1, 1), (5, 2), (8, 3)):
        feeds = mlp_input(batch, seed)
        served = infer_once(protocol, url, model, feeds)["logits"]
        expected = reference_run("mlp", feeds)["logits"]
        assert served.shape == expected.shape == (batch, 4)
        assert np.max(np.abs(served - expected)) <= FP32_TOLERANCE
    assert served_providers(server.metrics_text())[model]["provider"] == provider


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["bow_cpu", "bow_openvino"])
def test_integer_inputs_with_variable_sequence_length(server, reference_run, protocol, model):
    url = server.http_url if protocol == "http" else server.grpc_url
    for sequence in (3, 17):
        feeds = bow_input(4, sequence, seed=sequence)
        feeds["attention_mask"][2, sequence // 2:] = 0
        served = infer_once(protocol, url, model, feeds)["logits"]
        assert np.max(np.abs(served - reference_run("bag_of_words", feeds)["logits"])) <= FP32_TOLERANCE


def _model_stats(server, model: str):
    client = make_client("grpc", server.grpc_url)
    try:
        return client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()


def test_32_concurrent_clients_are_batched_and_each_gets_its_own_answer(server, reference_run):
    model, clients, requests_each = "mlp_cpu", 32, 8
    before = _model_stats(server, model)
    barrier = threading.Barrier(clients)

    def one_client(index: int) -> int:
        client = make_client("grpc", server.grpc_url)
        checked = 0
        try:
            barrier.wait()
            for step in range(requests_each):
                batch = 1 + (index + step) % 3
                feeds = mlp_input(batch, seed=1000 * index + step)  # unique inputs per request
                served = client.infer(model, make_inputs("grpc", feeds)).as_numpy("logits")
                expected = reference_run("mlp", feeds)["logits"]
                assert served.shape == expected.shape, (index, step)
                assert np.max(np.abs(served - expected)) <= FP32_TOLERANCE, (index, step)
                checked += 1
        finally:
            client.close()
        return checked

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        assert sum(pool.map(one_client, range(clients))) == clients * requests_each

    after = _model_stats(server, model)
    requests = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert requests == clients * requests_each
    # Triton's own statistics: fewer execute() calls than requests means the backend
    # received multi-request batches (and stacked them into one provider call each).
    assert executions < requests / 2, f"{requests} requests in {executions} executions"
    batch_sizes = [int(b["batch_size"]) for b in after["batch_stats"]]
    assert max(batch_sizes) > 3  # requests carry 1-3 rows, so > 3 rows means several requests stacked
    # And the backend's own counters agree, once published (they lag by up to
    # FLUSH_INTERVAL_S): every request Triton counts as a success was answered by us.
    succeeded = int(after["inference_stats"]["success"]["count"])
    deadline = time.monotonic() + 10
    while True:
        metrics = server.metrics_text()
        executed = sum(float(s["value"]) for s in parse_series(metrics, "portable_ep_executions_total") if s["model"] == model)
        answered = sum(float(s["value"]) for s in parse_series(metrics, "portable_ep_requests_total") if s["model"] == model)
        if answered >= succeeded or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answered >= succeeded
    assert answered > executed


BAD_REQUESTS = {
    # case: (model, feeds, words the error must contain)
    "wrong dtype": ("mlp_cpu", {"x": np.zeros((1, 16), np.int32)}, ["'x'", "INT32", "FP32"]),
    "wrong shape": ("mlp_cpu", {"x": np.zeros((1, 15), np.float32)}, ["'x'", "shape", "[1,15]"]),
    "missing input": ("bow_cpu", {"input_ids": np.zeros((1, 4), np.int64)}, ["attention_mask", "missing"]),
    "unknown input": ("mlp_cpu", {"x": np.zeros((1, 16), np.float32), "bogus": np.zeros((1, 16), np.float32)}, ["bogus"]),
    "batch over max_batch_size": ("mlp_cpu", {"x": np.zeros((9, 16), np.float32)}, ["batch-size", "8"]),
    "empty batch": ("mlp_cpu", {"x": np.zeros((0, 16), np.float32)}, ["'x'", "byte size"]),
    # Passes Triton's own checks (dims are -1) and is caught by the backend.
    "inputs disagree on sequence": ("bow_cpu", {"input_ids": np.zeros((1, 4), np.int64), "attention_mask": np.ones((1, 5), np.int64)}, ["sequence", "input_ids has 4", "attention_mask has 5"]),
    # Passes every shape check; refused by the vocabulary check (read from the ONNX file) before the runtime.
    "token id past the vocabulary": ("bow_cpu", {"input_ids": np.full((1, 4), 1000, np.int64), "attention_mask": np.ones((1, 4), np.int64)}, ["token id 1000", "the vocabulary has 100 ids"]),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_its_own_clear_error(server, protocol, case):
    from tritonclient.utils import InferenceServerException

    model, feeds, words = BAD_REQUESTS[case]
    url = server.http_url if protocol == "http" else server.grpc_url
    with pytest.raises(InferenceServerException) as error:
        infer_once(protocol, url, model, feeds)
    for word in words:
        assert word in error.value.message(), error.value.message()
    # the client got it wrong: 400 / INVALID_ARGUMENT, whether Triton refused it or the backend did
    assert str(error.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT"), (case, error.value.status())


@pytest.mark.parametrize("model", ["bow_cpu", "bow_openvino"])
def test_a_zero_size_dim_is_served_as_the_model_answers(server, reference_run, model):
    """An empty sequence is no bad request: the model answers it (an empty bag of words: zeros)."""
    feeds = {"input_ids": np.zeros((2, 0), np.int64), "attention_mask": np.zeros((2, 0), np.int64)}
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        served = infer_once(protocol, url, model, feeds)["logits"]
        assert served.shape == (2, 3)
        assert np.array_equal(served, reference_run("bag_of_words", feeds)["logits"])


def test_bad_requests_do_not_harm_concurrent_good_ones(server, reference_run):
    """Good and bad requests interleaved from 16 clients: every good one is answered correctly."""
    from tritonclient.utils import InferenceServerException

    before = _model_stats(server, "bow_cpu")
    bad_cases = [BAD_REQUESTS[c] for c in ("inputs disagree on sequence", "token id past the vocabulary")]

    def one_client(index: int):
        client = make_client("grpc", server.grpc_url)
        outcomes = []
        try:
            for step in range(12):
                if (index + step) % 3 == 0:
                    model, feeds, words = bad_cases[(index + step) % len(bad_cases)]
                    try:
                        client.infer(model, make_inputs("grpc", feeds))
                        outcomes.append("bad request succeeded")
                    except InferenceServerException as exc:
                        outcomes.append("ok" if all(w in exc.message() for w in words) else exc.message())
                else:
                    feeds = bow_input(1 + step % 2, 6, seed=100 * index + step)
                    served = client.infer("bow_cpu", make_inputs("grpc", feeds)).as_numpy("logits")
                    good = np.max(np.abs(served - reference_run("bag_of_words", feeds)["logits"])) <= FP32_TOLERANCE
                    outcomes.append("ok" if good else "wrong answer")
        finally:
            client.close()
        return outcomes

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = [o for client in pool.map(one_client, range(16)) for o in client]
    assert outcomes.count("ok") == len(outcomes), [o for o in outcomes if o != "ok"]
    after = _model_stats(server, "bow_cpu")
    assert int(after["execution_count"]) - int(before["execution_count"]) < len(outcomes)  # they really shared batches
    assert server.is_ready()
    assert server.process.poll() is None


def test_unavailable_provider_falls_back_and_the_log_says_why(server, reference_run):
    feeds = mlp_input(2, seed=7)
    served = infer_once("grpc", server.grpc_url, "mlp_fallback", feeds)["logits"]
    assert np.max(np.abs(served - reference_run("mlp", feeds)["logits"])) <= FP32_TOLERANCE
    assert served_providers(server.metrics_text())["mlp_fallback"]["provider"] == "cpu"
    log = server.log_text()
    skipped = [line for line in log.splitlines() if "mlp_fallback" in line and "skipped provider 'cuda'" in line]
    assert skipped, "the log does not say why cuda was skipped"
    assert "CUDAExecutionProvider" in skipped[0] and "onnxruntime-gpu" in skipped[0]
    skipped_metric = [s for s in parse_series(server.metrics_text(), "portable_ep_provider_skipped") if s["model"] == "mlp_fallback"]
    assert [s["skipped_provider"] for s in skipped_metric] == ["cuda"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_string_tensors_reach_the_model_as_the_text_sent(server, protocol):
    """Triton's BYTES elements arrive as bytes; the model must see the text, never its Python repr (b'...')."""
    texts = ["abc", "déjà vu", "数据", ""]
    sent = np.array([[t.encode()] for t in texts], dtype=object)  # [batch, 1]: a per-sample scalar input
    served = infer_once(protocol, server.http_url if protocol == "http" else server.grpc_url, "strings_cpu", {"x": sent})["y"]
    assert served.shape == (len(texts),)
    assert [v.decode() for v in served] == [t + t for t in texts]


def test_bytes_that_are_not_utf8_are_refused_for_that_request(server):
    with pytest.raises(Exception, match=r"input 'x' element \[0\] is not UTF-8 text"):
        infer_once("grpc", server.grpc_url, "strings_cpu", {"x": np.array([[b"\xff\xfe"]], dtype=object)})
    served = infer_once("grpc", server.grpc_url, "strings_cpu", {"x": np.array([[b"ok"]], dtype=object)})["y"]
    assert served.tolist() == [b"okok"]
