"""Self-healing serving, end to end: bad requests, poisoned sessions, killed stubs, tampered files.

One supervised tritonserver (explicit model control, as `portable-ep serve` runs it) serves
exported bundles on cpu and openvino; every good answer is compared with ONNX Runtime run
in-process on the bundle's fp32 model.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from portable_ep.models.healing import (
    HEALING_MODELS, MAX_POSITIONS, Reference, bow_request, bundle_of, conv_request, export_healing_bundles,
    write_healing_repository,
)
from portable_ep.client import make_client, make_inputs
from portable_ep.metrics_text import parse_series
from portable_ep.supervisor import find_stubs
from portable_ep.triton_process import TritonServer

pytestmark = pytest.mark.e2e

TOLERANCE = 1e-4  # openvino fp32 (f32 pinned) vs ONNX Runtime


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return export_healing_bundles(tmp_path_factory.mktemp("healing"))


@pytest.fixture(scope="module")
def reference(bundles):
    return Reference(bundles)


@pytest.fixture(scope="module")
def healing_server(tmp_path_factory, bundles, installed_backend_dir):
    repository = write_healing_repository(tmp_path_factory.mktemp("healing-repo"), bundles)
    with TritonServer(repository, backend_directory=installed_backend_dir, supervise=True) as running:
        yield running


def _http_status(server, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _raw_http(server, path: str, body: bytes) -> str:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return f"{response.status} {response.read().decode()}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode()}"


def _good_request(model: str, seed: int) -> dict:
    rng = random.Random(seed)
    if bundle_of(model) == "bow":
        return bow_request(rng.randint(1, 2), rng.randint(3, 32), seed)
    return conv_request(rng.randint(1, 4), seed)


class GoodTraffic:
    """Clients sending good requests (and checking every answer) for as long as a test runs."""

    def __init__(self, server, reference, models, clients: int = 4):
        self.server, self.reference, self.models = server, reference, models
        self.stop = threading.Event()
        self.checked = 0
        self.problems = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, index: int) -> None:
        client = make_client("grpc", self.server.grpc_url)
        step = 0
        try:
            while not self.stop.is_set():
                model = self.models[(index + step) % len(self.models)]
                feeds = _good_request(model, seed=10_000 * index + step)
                step += 1
                try:
                    served = client.infer(model, make_inputs("grpc", feeds)).as_numpy("logits")
                    error = float(np.max(np.abs(served - self.reference(bundle_of(model), feeds))))
                    problem = None if error <= TOLERANCE else f"{model}: wrong answer (max diff {error:.2e})"
                except Exception as exc:  # noqa: BLE001 - every failure of a good request is a finding
                    problem = f"{model}: {exc}"
                with self._lock:
                    self.checked += 1
                    if problem:
                        self.problems.append(problem)
        finally:
            client.close()

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


F32, I64 = np.float32, np.int64
IDS = np.ones((1, 8), I64)

# kind: (model, feeds, words the error must contain). Each is refused alone, with a clear error.
BAD_REQUESTS = {
    "float64 for a float32 input": ("conv_cpu", {"image": np.zeros((1, 3, 32, 32), np.float64)}, ["image", "FP64", "FP32"]),
    "int32 token ids for int64": ("bow_cpu", {"input_ids": IDS.astype(np.int32), "attention_mask": IDS}, ["input_ids", "INT32", "INT64"]),
    "wrong rank": ("conv_openvino", {"image": np.zeros((1, 32, 32), F32)}, ["image", "[1,32,32]"]),
    "wrong fixed dim (4 channels)": ("conv_openvino", {"image": np.zeros((1, 4, 32, 32), F32)}, ["image", "[1,4,32,32]"]),
    "missing input": ("bow_cpu", {"input_ids": IDS}, ["attention_mask", "missing"]),
    "unknown input": ("bow_openvino", {"input_ids": IDS, "attention_mask": IDS, "token_type_ids": IDS}, ["token_type_ids"]),
    "batch over max_batch_size": ("conv_cpu", {"image": np.zeros((9, 3, 32, 32), F32)}, ["batch-size", "8"]),
    "empty batch": ("conv_openvino", {"image": np.zeros((0, 3, 32, 32), F32)}, ["image"]),
    "inputs disagree on the sequence": ("bow_openvino", {"input_ids": np.ones((1, 4), I64), "attention_mask": np.ones((1, 5), I64)}, ["sequence", "input_ids has 4", "attention_mask has 5"]),
    "inputs disagree on the batch": ("bow_cpu", {"input_ids": np.ones((2, 4), I64), "attention_mask": np.ones((1, 4), I64)}, ["batch"]),
    "negative token id": ("bow_cpu", {"input_ids": -IDS, "attention_mask": IDS}, ["token id -1", "vocabulary has 100 ids"]),
    "token id past the vocabulary": ("bow_openvino", {"input_ids": IDS * 100, "attention_mask": IDS}, ["token id 100", "vocabulary has 100 ids"]),
    "sequence past the position table": ("bow_openvino", {"input_ids": np.ones((1, 65), I64), "attention_mask": np.ones((1, 65), I64)}, ["sequence 65", f"limit of {MAX_POSITIONS}", "request.max_dim.sequence"]),
    "more elements than request.max_elements": ("bow_cpu", {"input_ids": np.ones((8, 40), I64), "attention_mask": np.ones((8, 40), I64)}, ["320 elements", "300", "request.max_elements"]),
    "more bytes than request.max_bytes": ("conv_cpu", {"image": np.zeros((2, 3, 256, 256), F32)}, ["1.5 MiB", "1.0 MiB", "request.max_bytes"]),
    "NaN in an image": ("conv_openvino", {"image": np.full((1, 3, 32, 32), np.nan, F32)}, ["NaN", "request.check_finite"]),
    "infinity in an image": ("conv_cpu", {"image": np.full((1, 3, 32, 32), np.inf, F32)}, ["infinity", "request.check_finite"]),
    "image smaller than the stride (runtime)": ("conv_openvino", {"image": np.ones((1, 3, 2, 2), F32)}, ["openvino failed on this request", "Convolution", "overflow"]),
    "image of another size (runtime)": ("conv_cpu", {"image": np.ones((1, 3, 40, 40), F32)}, ["cpu failed on this request", "MatMul dimension mismatch"]),
    "sequence past the table, checks off (runtime)": ("bow_cpu_unchecked", {"input_ids": np.ones((1, 70), I64), "attention_mask": np.ones((1, 70), I64)}, ["cpu failed on this request", "broadcast"]),
    "unknown model": ("no_such_model", {"image": np.zeros((1, 3, 32, 32), F32)}, ["no_such_model"]),
}
# Requests tritonclient will not build: sent as raw HTTP/JSON.
RAW_BAD_REQUESTS = {
    "data shorter than the shape": ("/v2/models/conv_cpu/infer", json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1.0, 2.0]}]}).encode(), ["Shape does not match", "data"]),
    "strings for a float input": ("/v2/models/conv_cpu/infer", json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 32, 32], "datatype": "BYTES", "data": ["x"] * 3072}]}).encode(), ["image", "BYTES", "FP32"]),
    "malformed JSON": ("/v2/models/bow_cpu/infer", b'{"inputs": [', ["JSON"]),
    "unknown output requested": ("/v2/models/conv_cpu/infer", json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.5] * 3072}], "outputs": [{"name": "boxes"}]}).encode(), ["boxes"]),
    "model version that does not exist": ("/v2/models/conv_cpu/versions/7/infer", json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.5] * 3072}]}).encode(), ["version"]),
}


def test_every_kind_of_bad_request_is_refused_alone_while_good_traffic_is_served(healing_server, reference):
    from tritonclient.utils import InferenceServerException

    assert len(BAD_REQUESTS) + len(RAW_BAD_REQUESTS) >= 20
    refused = {}
    with GoodTraffic(healing_server, reference, ["bow_cpu", "bow_openvino", "conv_cpu", "conv_openvino"]) as traffic:
        for protocol in ("grpc", "http"):
            client = make_client(protocol, healing_server.grpc_url if protocol == "grpc" else healing_server.http_url)
            try:
                for kind, (model, feeds, words) in BAD_REQUESTS.items():
                    try:
                        client.infer(model, make_inputs(protocol, feeds))
                        message = None
                    except InferenceServerException as exc:
                        message = exc.message()
                    assert message is not None, f"{kind} ({protocol}) was served"
                    missing = [w for w in words if w not in message]
                    assert not missing, f"{kind} ({protocol}): {message!r} lacks {missing}"
                    assert len(message) < 600, f"{kind}: the error is not bounded ({len(message)} chars)"
                    refused[kind, protocol] = message
            finally:
                client.close()
        for kind, (path, body, words) in RAW_BAD_REQUESTS.items():
            answer = _raw_http(healing_server, path, body)
            assert answer[:3] in ("400", "404", "500"), f"{kind}: {answer}"
            assert all(w in answer for w in words), f"{kind}: {answer}"
            refused[kind, "raw http"] = answer
        time.sleep(0.5)  # good traffic keeps flowing after the last bad request
    assert traffic.checked > 50, traffic.checked
    assert not traffic.problems, traffic.problems[:5]
    assert _http_status(healing_server, "/v2/health/ready") == 200
    print(f"\n{len(BAD_REQUESTS) + len(RAW_BAD_REQUESTS)} kinds of bad request refused, {traffic.checked} concurrent good requests all correct")
    for (kind, protocol), message in sorted(refused.items()):
        if protocol != "http":
            print(f"  {kind} [{protocol}]: {message[:160]}")


def test_a_runtime_failure_logs_its_full_text_and_answers_with_the_cause(healing_server):
    from tritonclient.utils import InferenceServerException

    client = make_client("http", healing_server.http_url)
    try:
        with pytest.raises(InferenceServerException) as error:
            client.infer("conv_openvino", make_inputs("http", {"image": np.ones((1, 3, 2, 2), F32)}))
    finally:
        client.close()
    message = error.value.message()
    # The client gets the cause, not OpenVINO's first line ("Exception from src/inference/...").
    assert "src/inference" not in message and "overflow while multiplying dim and stride" in message
    deadline = time.monotonic() + 5
    while "infer_request.cpp" not in healing_server.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = [line for line in healing_server.log_text().splitlines() if "openvino failed on a request of model 'conv_openvino'" in line]
    assert logged and "image [1, 3, 2, 2]" in logged[-1]
    assert "infer_request.cpp" in healing_server.log_text()  # the full text, source locations included


@pytest.mark.parametrize("model", ["conv_openvino", "conv_cpu", "bow_cpu_unchecked"])
def test_no_request_poisons_a_served_session(healing_server, reference, model):
    """Randomized: bad requests that fail inside the runtime, interleaved with good ones of several shapes."""
    from tritonclient.utils import InferenceServerException

    rng = random.Random(hash(model) % 1000)
    if bundle_of(model) == "conv":
        bad_shapes = [(1, 3, 2, 2), (1, 3, 40, 40), (2, 3, 16, 16), (1, 3, 64, 64)]
        bad = lambda: {"image": np.ones(rng.choice(bad_shapes), F32)}  # noqa: E731
        good = lambda seed: conv_request(rng.randint(1, 4), seed)  # noqa: E731
    else:
        bad = lambda: {"input_ids": np.ones((1, rng.randint(65, 90)), I64), "attention_mask": np.ones((1, 70), I64)}  # noqa: E731
        good = lambda seed: bow_request(rng.randint(1, 3), rng.randint(3, MAX_POSITIONS), seed)  # noqa: E731
    client = make_client("grpc", healing_server.grpc_url)
    failures, goods = 0, 0
    try:
        for step in range(80):
            if rng.random() < 0.35:
                with pytest.raises(InferenceServerException):
                    client.infer(model, make_inputs("grpc", bad()))
                failures += 1
                continue
            feeds = good(step)
            served = client.infer(model, make_inputs("grpc", feeds)).as_numpy("logits")
            expected = reference(bundle_of(model), feeds)
            assert np.max(np.abs(served - expected)) <= TOLERANCE, f"step {step}: a good request after a bad one was answered wrong"
            goods += 1
    finally:
        client.close()
    assert failures >= 10 and goods >= 30


@pytest.mark.parametrize("provider, precision, options", [
    ("cpu", "fp32", {}),
    ("openvino", "fp32", {}),
    ("openvino", "int8", {}),
    ("npu", "int8", {"static_shapes": "image:1x3x32x32"}),
])
def test_no_request_poisons_a_session_of_any_provider(bundles, provider, precision, options):
    """The same interleaving in-process on each provider's real session (npu: its CPU emulation)."""
    from portable_ep.backends import LoadRequest, find_model_artifacts
    from portable_ep.backends.registry import default_registry

    artifacts = find_model_artifacts(bundles["conv"])
    load = lambda: default_registry().get(provider).load(LoadRequest(artifacts=artifacts, precision=precision, options=options))  # noqa: E731
    session, fresh = load(), load()
    rng = random.Random(7)
    bad_shapes = [(1, 3, 2, 2), (1, 3, 40, 40), (1, 3, 16, 16)]
    failures = 0
    for step in range(60):
        if rng.random() < 0.35:
            with pytest.raises(Exception):
                session.run({"image": np.ones(rng.choice(bad_shapes), F32)})
            failures += 1
            continue
        feeds = conv_request(1, seed=step)
        # A session that never failed answers the same request: any difference is poison.
        assert np.array_equal(session.run(feeds)["logits"], fresh.run(feeds)["logits"]), f"step {step}"
    assert failures >= 10
    session.close()
    fresh.close()


def _restarts(server, model: str) -> float:
    return sum(float(s["value"]) for s in parse_series(server.metrics_text(), "portable_ep_model_restarts_total") if s["model"] == model)


@pytest.mark.parametrize("model, sig", [("conv_openvino", signal.SIGKILL), ("bow_cpu", signal.SIGSEGV)])
def test_a_killed_stub_is_not_ready_then_serves_again_within_10_s(healing_server, reference, model, sig):
    before = _restarts(healing_server, model)
    others = [m for m in ("bow_openvino", "conv_cpu") if m != model]
    stub = next(s for s in find_stubs(healing_server.process.pid).values() if s.model == model and not s.dead)
    with GoodTraffic(healing_server, reference, others, clients=2) as traffic:
        killed = time.monotonic()
        os.kill(stub.pid, sig)
        not_ready_seen = model_not_ready_seen = None
        served_again = None
        client = make_client("grpc", healing_server.grpc_url)
        try:
            while time.monotonic() - killed < 20:
                server_ready = _http_status(healing_server, "/v2/health/ready") == 200
                model_ready = _http_status(healing_server, f"/v2/models/{model}/ready") == 200
                if not server_ready and not_ready_seen is None:
                    not_ready_seen = time.monotonic() - killed
                if not model_ready and model_not_ready_seen is None:
                    model_not_ready_seen = time.monotonic() - killed
                if not_ready_seen is not None and server_ready and model_ready:
                    feeds = _good_request(model, seed=5)
                    served = client.infer(model, make_inputs("grpc", feeds)).as_numpy("logits")
                    assert np.max(np.abs(served - reference(bundle_of(model), feeds))) <= TOLERANCE
                    served_again = time.monotonic() - killed
                    break
                time.sleep(0.05)
        finally:
            client.close()
    supervisor_log = healing_server.log_path.with_name("supervisor.log")
    supervisor_log = supervisor_log.read_text() if supervisor_log.exists() else "(no supervisor log)"
    assert not_ready_seen is not None and not_ready_seen < 2.0, f"readiness never turned false after the stub died: {supervisor_log}"
    assert model_not_ready_seen is not None
    assert served_again is not None and served_again <= 10.0, f"not serving again after {time.monotonic() - killed:.1f} s"
    # The other models kept serving, every answer right.
    assert traffic.checked > 10 and not traffic.problems, traffic.problems[:5]
    deadline = time.monotonic() + 5
    while _restarts(healing_server, model) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _restarts(healing_server, model) == before + 1
    causes = [s["cause"] for s in parse_series(healing_server.metrics_text(), "portable_ep_model_last_restart_info") if s["model"] == model]
    assert causes and f"killed by {sig.name}" in causes[0]
    supervisor_log = healing_server.log_path.with_name("supervisor.log").read_text()
    assert f"model '{model}'" in supervisor_log and f"killed by {sig.name}" in supervisor_log
    print(f"\n{model} ({sig.name}): not ready after {not_ready_seen:.2f} s, serving again after {served_again:.2f} s")


def test_an_unloaded_model_is_left_unloaded(healing_server):
    """An operator's unload is not a crash: the supervisor must not bring the model back."""
    client = make_client("http", healing_server.http_url)
    try:
        client.unload_model("bow_cpu_unchecked")
        time.sleep(1.5)
        assert not client.is_model_ready("bow_cpu_unchecked")
        client.load_model("bow_cpu_unchecked")
        assert client.is_model_ready("bow_cpu_unchecked")
    finally:
        client.close()
    assert _restarts(healing_server, "bow_cpu_unchecked") == 0


def _portable_ep(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "portable_ep.cli", *args], capture_output=True, text=True, timeout=300)


def test_a_tampered_bundle_is_refused_at_load_and_by_verify(tmp_path, bundles, installed_backend_dir):
    good = _portable_ep("verify", str(bundles["conv"]))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "all" in good.stdout and "files match" in good.stdout

    tampered = tmp_path / "conv"
    shutil.copytree(bundles["conv"], tampered)
    weights = tampered / "openvino" / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    weights.write_bytes(bytes(data))
    bad = _portable_ep("verify", str(tampered))
    assert bad.returncode == 1
    assert "MISMATCH openvino/model.bin" in bad.stdout and "1 of" in bad.stdout

    repository = write_healing_repository(tmp_path, {"conv": tampered, "bow": bundles["bow"]},
                                          {"conv_cpu": HEALING_MODELS["conv_cpu"], "bow_cpu": HEALING_MODELS["bow_cpu"]})
    with TritonServer(repository, backend_directory=installed_backend_dir,
                      extra_args=["--exit-on-error=false", "--strict-readiness=false"]) as server:
        index = {m["name"]: m for m in server.repository_index()}
        assert index["bow_cpu"]["state"] == "READY"  # an intact model beside it is not harmed
        assert index["conv_cpu"]["state"] == "UNAVAILABLE"
        reason = index["conv_cpu"]["reason"]
        assert "integrity check" in reason and "openvino/model.bin" in reason and "sha256" in reason, reason


def test_portable_ep_supervise_heals_a_triton_started_elsewhere(tmp_path, bundles, reference, installed_backend_dir):
    """A Triton an operator started (explicit model control), healed by `portable-ep supervise` beside it."""
    repository = write_healing_repository(tmp_path, bundles, {"bow_cpu": HEALING_MODELS["bow_cpu"]})
    with TritonServer(repository, backend_directory=installed_backend_dir,
                      extra_args=["--model-control-mode=explicit", "--load-model=*"]) as server:
        supervise = subprocess.Popen(
            [sys.executable, "-m", "portable_ep.cli", "supervise", "--url", server.http_url, "--pid", str(server.process.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            assert "supervising tritonserver pid" in supervise.stdout.readline()
            stub = next(s for s in find_stubs(server.process.pid).values() if s.model == "bow_cpu" and not s.dead)
            os.kill(stub.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            feeds = bow_request(1, 8, seed=1)
            served = None
            while time.monotonic() < deadline and served is None:
                time.sleep(0.2)
                client = make_client("grpc", server.grpc_url)
                try:
                    served = client.infer("bow_cpu", make_inputs("grpc", feeds)).as_numpy("logits")
                except Exception:  # noqa: BLE001 - down until the supervisor reloads it
                    served = None
                finally:
                    client.close()
        finally:
            supervise.send_signal(signal.SIGTERM)
            output = supervise.communicate(timeout=20)[0]
        assert served is not None, f"not serving again within 10 s: {output}\n{server.log_tail(60)}"
        assert np.max(np.abs(served - reference("bow", feeds))) <= TOLERANCE
        assert supervise.returncode == 0, output
        assert "model 'bow_cpu'" in output and "killed by SIGKILL" in output and "ready again" in output


def test_a_model_with_two_instances_is_restarted_once(tmp_path, bundles, reference, installed_backend_dir):
    """Unloading a model stops its other instance too: that exit is the supervisor's own, not a second crash."""
    from portable_ep.exporters.repository import RepoOptions, add_to_repository

    repository = tmp_path / "repository"
    add_to_repository(bundles["conv"], repository, "conv_twice", RepoOptions(providers="cpu", instances=2))
    with TritonServer(repository, backend_directory=installed_backend_dir, supervise=True) as server:
        stubs = [s for s in find_stubs(server.process.pid).values() if s.model == "conv_twice" and not s.dead]
        assert len(stubs) == 2
        os.kill(stubs[0].pid, signal.SIGKILL)
        def recovered() -> bool:
            events = server.supervisor.events
            return bool(events) and events[-1].ready_after_s is not None

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not recovered():
            time.sleep(0.1)
        assert recovered(), "not serving again within 10 s"
        time.sleep(3)  # several more looks: the sibling's exit must not count as a crash
        supervisor_log = server.log_path.with_name("supervisor.log").read_text()
        assert supervisor_log.count("marking it not ready") == 1, supervisor_log
        assert len([s for s in find_stubs(server.process.pid).values() if s.model == "conv_twice" and not s.dead]) == 2
        feeds = conv_request(2, seed=3)
        client = make_client("grpc", server.grpc_url)
        try:
            served = client.infer("conv_twice", make_inputs("grpc", feeds)).as_numpy("logits")
        finally:
            client.close()
        assert np.max(np.abs(served - reference("conv", feeds))) <= TOLERANCE
        assert _restarts(server, "conv_twice") == 1
