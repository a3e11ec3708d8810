"""Process faults `portable-ep serve` must survive (issue 24, points 3 and 5), each bounded to a few seconds.

- a damaged bundle beside a good one: the good one serves, the bad one is reported with its
  reason, Triton's readiness and serve's (--ready-models) say what they document;
- SIGKILL of serve: tritonserver and its stubs go with it;
- SIGKILL of tritonserver: serve restarts it, counts it, leaves no stub of the old one;
- SIGSTOP of a stub under traffic: the model turns not ready, the stub is replaced, requests succeed again;
- SIGTERM during an export: no `.partial-` folder survives.

Every server here is a real tritonserver started by the real CLI (or by TritonServer, which
serve runs), on free loopback ports; the bundle is a tiny MLP exported in the test.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from portable_ep.client import make_client, make_inputs
from portable_ep.metrics_text import parse_series
from portable_ep.supervisor import find_stubs
from portable_ep.triton_process import TritonServer, free_port

pytestmark = pytest.mark.e2e

FEATURES = 16


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory):
    from portable_ep.exporters.bundle import ExportOptions, export_bundle
    from portable_ep.models.tiny import build_mlp

    root = tmp_path_factory.mktemp("faults")
    source = build_mlp(root / "mlp.onnx", seed=5, features=FEATURES)
    bundle = export_bundle(source, root / "mlp", ExportOptions(progress=False, formats=("onnx",), precisions=("fp32",))).bundle
    return bundle


@pytest.fixture(scope="module")
def reference(mlp_bundle):
    import onnxruntime as ort

    session = ort.InferenceSession(str(mlp_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(["logits"], feeds)[0]


def _repository(root: Path, bundle: Path, damaged: bool = False) -> Path:
    from portable_ep.exporters.repository import RepoOptions, add_to_repository

    repository = root / "repository"
    add_to_repository(bundle, repository, "good", RepoOptions(providers="cpu"))
    if damaged:
        add_to_repository(bundle, repository, "bad", RepoOptions(providers="cpu"))
        variant = repository / "bad" / "1" / "model.onnx"
        data = bytearray(variant.read_bytes())
        data[len(data) // 2] ^= 0x01  # one flipped bit: the integrity check at load refuses it
        variant.write_bytes(bytes(data))
    return repository


def _feeds(seed: int) -> dict:
    return {"x": np.random.default_rng(seed).random((2, FEATURES), dtype=np.float32)}


def _http(url: str, timeout: float = 5.0):
    """(status, body) of a GET; (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        return 0, str(exc)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int, name: str) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and Path(argv0).name == name and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def _wait(condition, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


class Serve:
    """`portable-ep serve` as a user runs it, on free ports, its output in a file."""

    def __init__(self, tmp_path: Path, repository: Path, backend_dir: Path, *args: str):
        self.ports = {name: free_port() for name in ("http", "grpc", "metrics", "status")}
        self.output = tmp_path / "serve.out"
        command = [sys.executable, "-m", "portable_ep.cli", "serve", str(repository), "--backend-directory", str(backend_dir),
                   *(f"--{name}-port={port}" for name, port in self.ports.items()), *args]
        self._file = open(self.output, "w")
        self.process = subprocess.Popen(command, stdout=self._file, stderr=subprocess.STDOUT)
        self.http = f"http://127.0.0.1:{self.ports['http']}"
        self.status = f"http://127.0.0.1:{self.ports['status']}"
        self.grpc = f"127.0.0.1:{self.ports['grpc']}"

    def wait_serving(self, timeout: float = 90.0) -> None:
        serving = _wait(lambda: "portable-ep: ready --" in self.text() or self.process.poll() is not None, timeout)
        assert serving and self.process.poll() is None, f"serve is not serving:\n{self.text()[-3000:]}"
        _wait(lambda: _http(self.status + "/v2/health/live")[0] == 200, 10)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def tritonserver(self) -> int:
        pids = _wait(lambda: _children(self.process.pid, "tritonserver"), 10)
        assert len(pids) == 1, pids
        return pids[0]

    def infer(self, feeds: dict) -> np.ndarray:
        client = make_client("grpc", self.grpc)
        try:
            return client.infer("good", make_inputs("grpc", feeds)).as_numpy("logits")
        finally:
            client.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()


@pytest.fixture
def serve_process(tmp_path, installed_backend_dir):
    started = []

    def start(repository: Path, *args: str) -> Serve:
        serve = Serve(tmp_path, repository, installed_backend_dir, *args)
        started.append(serve)
        serve.wait_serving()
        return serve

    yield start
    for serve in started:
        serve.close()


def test_one_damaged_bundle_is_reported_while_the_good_one_serves(tmp_path, mlp_bundle, reference, serve_process):
    serve = serve_process(_repository(tmp_path, mlp_bundle, damaged=True), "--ready-models", "good", "--load-retries", "2")
    feeds = _feeds(1)
    assert np.allclose(serve.infer(feeds), reference(feeds), atol=1e-5)

    # The operator's view: Triton's repository index, and serve's own report.
    assert _http(serve.http + "/v2/models/bad/ready")[0] == 400
    request = urllib.request.Request(serve.http + "/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        index = {entry["name"]: entry for entry in json.loads(response.read())}
    assert index["good"]["state"] == "READY" and index["bad"]["state"] == "UNAVAILABLE"
    assert "integrity check" in index["bad"]["reason"] and "model.onnx" in index["bad"]["reason"]
    text = serve.text()
    assert re.search(r"model 'bad' is UNAVAILABLE: IntegrityError: .*integrity check", text.replace("\n", " ")), text[-3000:]

    # Readiness as documented: Triton's needs every model; serve's status port the listed ones.
    assert _http(serve.http + "/v2/health/ready")[0] == 400
    status, body = _http(serve.status + "/v2/health/ready")
    verdict = json.loads(body)
    assert status == 200 and verdict["ready"] and verdict["required"] == ["good"], body
    assert verdict["models"]["bad"]["state"] == "UNAVAILABLE" and "integrity check" in verdict["models"]["bad"]["reason"]
    assert "\nAt:" not in verdict["models"]["bad"]["reason"]  # the stub's traceback is cut

    # The supervisor retries the failed load with backoff (1 s, then 2 s), counts each failure, then gives up.
    gave_up = _wait(lambda: "giving up" in serve.text(), 15)
    assert gave_up, serve.text()[-3000:]
    text = serve.text()
    assert "model 'bad' failed to load: IntegrityError" in text and "retrying in 2 s (attempt 2 of 2)" in text
    failures = parse_series(_http(serve.status + "/metrics")[1], "portable_ep_supervisor_load_failures_total")
    assert [(s["model"], s["value"]) for s in failures] == [("bad", "3")]  # the first load and two retries
    assert serve.process.poll() is None
    assert np.allclose(serve.infer(feeds), reference(feeds), atol=1e-5)


def test_without_ready_models_serves_readiness_needs_every_model(tmp_path, mlp_bundle, serve_process):
    serve = serve_process(_repository(tmp_path, mlp_bundle, damaged=True), "--load-retries", "0")
    status, body = _http(serve.status + "/v2/health/ready")
    assert status == 503 and json.loads(body)["reason"] == "not ready: bad", body
    assert _http(serve.http + "/v2/health/ready")[0] == 400
    assert _http(serve.http + "/v2/models/good/ready")[0] == 200


def test_sigkill_of_serve_takes_tritonserver_and_its_stubs_along(tmp_path, mlp_bundle, serve_process):
    serve = serve_process(_repository(tmp_path, mlp_bundle))
    server = serve.tritonserver()
    stubs = [s.pid for s in find_stubs(server).values() if not s.dead]
    assert stubs
    killed = time.monotonic()
    serve.process.kill()
    serve.process.wait()
    assert _wait(lambda: not _alive(server), 5, interval=0.02), "tritonserver outlived serve"
    server_gone = time.monotonic() - killed
    assert _wait(lambda: not any(_alive(pid) for pid in stubs), 5, interval=0.02), "a stub outlived serve"
    stubs_gone = time.monotonic() - killed
    assert _http(serve.http + "/v2/health/live", timeout=2)[0] == 0  # nobody answers on the port
    print(f"\nSIGKILL of serve: tritonserver gone after {server_gone:.2f} s, its stubs after {stubs_gone:.2f} s")


def test_sigkill_of_tritonserver_restarts_it_and_kills_its_stubs(tmp_path, mlp_bundle, reference, serve_process):
    serve = serve_process(_repository(tmp_path, mlp_bundle))
    old = serve.tritonserver()
    old_stubs = [s.pid for s in find_stubs(old).values() if not s.dead]
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    restarted = _wait(lambda: [pid for pid in _children(serve.process.pid, "tritonserver") if pid != old]
                      and "tritonserver restarted" in serve.text(), 30)
    assert restarted, serve.text()[-3000:]
    serving_after = time.monotonic() - killed
    assert serve.process.poll() is None
    assert not any(_alive(pid) for pid in old_stubs), "a stub of the killed server is still running"
    feeds = _feeds(2)
    assert np.allclose(serve.infer(feeds), reference(feeds), atol=1e-5)
    text = serve.text()
    assert f"tritonserver (pid {old}) was killed by SIGKILL" in text and "server restart 1" in text
    metrics = _http(f"http://127.0.0.1:{serve.ports['metrics']}/metrics")[1]
    assert [s["value"] for s in parse_series(metrics, "portable_ep_server_restarts")] == ["1"]
    causes = [s["cause"] for s in parse_series(metrics, "portable_ep_server_last_restart_info")]
    assert causes and "killed by SIGKILL" in causes[0]
    assert "portable_ep_server_restarts_total 1" in _http(serve.status + "/metrics")[1]
    assert _http(serve.status + "/v2/health/ready")[0] == 200
    print(f"\nSIGKILL of tritonserver: a new one serving after {serving_after:.2f} s (backoff 1 s included)")


def test_a_stopped_stub_under_traffic_is_killed_and_replaced(tmp_path, mlp_bundle, reference, installed_backend_dir):
    deadline_s = 2.0
    # Triton 2.51's python backend never completes a batch that was inside the stub when it died, so
    # the old instance lingers until shutdown, which then waits --exit-timeout-secs (default 30 s).
    with TritonServer(_repository(tmp_path, mlp_bundle), backend_directory=installed_backend_dir, supervise=True,
                      heartbeat_deadline_s=deadline_s, extra_args=["--exit-timeout-secs=3"]) as server:
        stub = next(s for s in find_stubs(server.process.pid).values() if s.model == "good" and not s.dead)
        results, stop = [], threading.Event()

        def traffic():
            client = make_client("grpc", server.grpc_url)
            step = 0
            while not stop.is_set():
                feeds = _feeds(100 + step)
                step += 1
                try:
                    served = client.infer("good", make_inputs("grpc", feeds), client_timeout=10).as_numpy("logits")
                    results.append((time.monotonic(), bool(np.allclose(served, reference(feeds), atol=1e-5))))
                except Exception:  # noqa: BLE001 - failures while the stub is stopped are expected
                    results.append((time.monotonic(), False))
            client.close()

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        time.sleep(0.5)
        stopped = time.monotonic()
        os.kill(stub.pid, signal.SIGSTOP)
        try:
            not_ready = _wait(lambda: _http(f"http://{server.http_url}/v2/models/good/ready", timeout=2)[0] != 200,
                              deadline_s + 3, interval=0.05)
            not_ready_after = time.monotonic() - stopped
            assert not_ready, "the model stayed ready with its stub stopped"
            ready_again = _wait(lambda: _http(f"http://{server.http_url}/v2/models/good/ready", timeout=2)[0] == 200, 15)
            assert ready_again, server.log_tail()
            recovered = time.monotonic()
            time.sleep(1.0)
        finally:
            stop.set()
            sender.join(timeout=15)
            if _alive(stub.pid):
                os.kill(stub.pid, signal.SIGKILL)
        assert not_ready_after <= deadline_s + 2.0, f"not ready only after {not_ready_after:.1f} s"
        assert not _alive(stub.pid), "the stopped stub was not killed"
        new = [s for s in find_stubs(server.process.pid).values() if s.model == "good" and not s.dead]
        assert len(new) == 1 and new[0].pid != stub.pid
        after = [ok for at, ok in results if at > recovered + 0.2]
        assert after and all(after), f"{after.count(False)} of {len(after)} requests failed after the recovery"
        events = server.supervisor.events
        assert events and events[-1].stalled and "no heartbeat" in events[-1].cause and "stopped" in events[-1].cause
        log = server.log_path.with_name("supervisor.log").read_text()
        assert "stalled: no heartbeat" in log and "killed it" in log and "ready again" in log
        metrics = server.metrics_text()
        assert [s["value"] for s in parse_series(metrics, "portable_ep_model_stalls_total") if s["model"] == "good"] == ["1"]
        causes = [s["cause"] for s in parse_series(metrics, "portable_ep_model_last_restart_info") if s["model"] == "good"]
        assert causes and "stalled" in causes[0]
        assert server.supervisor_counters()["good"]["stalls"] == 1
        print(f"\nSIGSTOP of a stub (heartbeat deadline {deadline_s:g} s): not ready after {not_ready_after:.2f} s, "
              f"ready again after {recovered - stopped:.2f} s; {len(after)} requests after the recovery, all right")


def _spinner(path: Path) -> Path:
    """y = x + n: an ONNX Loop that runs n times (n from the request). n = 10**12 keeps ONNX Runtime busy
    for days with Python's lock released: a runtime call that does not return, while the stub still beats."""
    import onnx
    from onnx import TensorProto, helper

    scalar = lambda name, kind: helper.make_tensor_value_info(name, kind, [])  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "spin", [scalar("i", TensorProto.INT64), scalar("cond_in", TensorProto.BOOL), scalar("v_in", TensorProto.FLOAT)],
        [scalar("cond_out", TensorProto.BOOL), scalar("v_out", TensorProto.FLOAT)],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["n"], ["m"], keepdims=0),
         helper.make_node("Loop", ["m", "cond", "zero"], ["v"], body=body),
         helper.make_node("Add", ["x", "v"], ["y"])],
        "spinner",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("cond", TensorProto.BOOL, [], [True]), helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_runtime_call_that_does_not_return_is_a_stall(tmp_path, installed_backend_dir):
    from portable_ep.exporters.onnx_signature import onnx_signature
    from portable_ep.exporters.triton_config import build_model_config, write_model

    model = _spinner(tmp_path / "spinner.onnx")
    inputs, outputs = onnx_signature(model)
    write_model(tmp_path / "repository", build_model_config("spinner", inputs, outputs, max_batch_size=4, providers="cpu"),
                {"model.onnx": model})
    feeds = lambda n: {"x": np.zeros((1, 4), np.float32), "n": np.full((1, 1), n, np.int64)}  # noqa: E731
    deadline_s = 2.0
    with TritonServer(tmp_path / "repository", backend_directory=installed_backend_dir, supervise=True,
                      progress_deadline_s=deadline_s, extra_args=["--exit-timeout-secs=3"]) as server:
        client = make_client("grpc", server.grpc_url)
        try:
            assert client.infer("spinner", make_inputs("grpc", feeds(3))).as_numpy("y")[0, 0] == 3.0
            stub = next(s for s in find_stubs(server.process.pid).values() if s.model == "spinner" and not s.dead)
            stuck = threading.Thread(target=lambda: _ignore(lambda: client.infer(
                "spinner", make_inputs("grpc", feeds(10**12)), client_timeout=20)), daemon=True)
            sent = time.monotonic()
            stuck.start()
            recovered = _wait(lambda: server.supervisor.events and server.supervisor.events[-1].ready_after_s is not None, 20)
            assert recovered, server.log_path.with_name("supervisor.log").read_text() if server.supervisor else ""
            killed_after = server.supervisor.events[-1].died_at - sent
            other = make_client("grpc", server.grpc_url)
            try:
                assert other.infer("spinner", make_inputs("grpc", feeds(5))).as_numpy("y")[0, 0] == 5.0
            finally:
                other.close()
        finally:
            client.close()
        event = server.supervisor.events[-1]
        assert event.stalled and "no progress for" in event.cause and f"deadline {deadline_s:g} s" in event.cause
        assert deadline_s <= killed_after <= deadline_s + 2.0, killed_after
        assert not _alive(stub.pid)
        assert [s["value"] for s in parse_series(server.metrics_text(), "portable_ep_model_stalls_total")
                if s["model"] == "spinner"] == ["1"]
        print(f"\nruntime call that does not return (progress deadline {deadline_s:g} s): stub killed after "
              f"{killed_after:.2f} s, serving again after {event.ready_after_s + killed_after:.2f} s")


def _ignore(call) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001 - the request in the killed stub fails or times out: expected
        pass


def test_sigterm_during_export_leaves_no_partial_folder(tmp_path):
    from portable_ep.models.tiny import build_bag_of_words

    source = build_bag_of_words(tmp_path / "bow.onnx", seed=1, max_positions=32)
    out = tmp_path / "bundles" / "bow"
    export = subprocess.Popen([sys.executable, "-m", "portable_ep.cli", "export", str(source), str(out), "--no-progress",
                               "--formats", "onnx,openvino", "--precisions", "fp32,int8"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    partial = lambda: list(out.parent.glob(".bow.partial-*")) if out.parent.exists() else []  # noqa: E731
    try:
        assert _wait(lambda: partial() or export.poll() is not None, 120, interval=0.01) and partial(), \
            f"no partial folder seen (export exited {export.poll()})"
        time.sleep(0.3)  # well inside the work
        export.send_signal(signal.SIGTERM)
        output = export.communicate(timeout=60)[0]
    finally:
        if export.poll() is None:
            export.kill()
    assert export.returncode == 128 + signal.SIGTERM, output
    assert not partial(), f"left behind: {partial()}"
    assert not out.exists()
    assert "Traceback" not in output
