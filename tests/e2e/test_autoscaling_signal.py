"""The autoscaling signal is real: Debian's Prometheus scrapes `portable-ep serve` with the rendered
recording rule, and the queue-time metric the HPA reads rises above its target under
concurrency 16 and falls back at idle (docs/kubernetes.md).

The model is a wide MLP (~7 ms per batch of 4 on this class of CPU): at concurrency 16 each
request waits for about three batches ahead of it, the saturation an HPA should answer with
another replica. Prometheus gets the `namespace` and `pod` labels as static labels, which is what
Kubernetes service discovery adds, so the rule runs unchanged.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import yaml

from portable_ep.deploy import autoscaling
from portable_ep.deploy.kubernetes import prometheus_rule
from portable_ep.exporters.onnx_signature import onnx_signature
from portable_ep.exporters.triton_config import build_model_config, write_model
from portable_ep.images.targets import load_targets
from portable_ep.models.tiny import build_mlp
from portable_ep.triton_process import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

MODEL = "wide_mlp"
CONCURRENCY = 16
LOAD_S = 45.0
IDLE_LIMIT_S = 90.0  # the rule's 30 s window must empty, plus scrape and evaluation intervals
TARGET_US = float(autoscaling.target_average_value(autoscaling.DEFAULT_QUEUE_TARGET_MS))
LABELS = {"namespace": "serving", "pod": "portable-ep-cpu-0"}


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _wait(url: str, limit_s: float, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode} before it was ready")
        try:
            _get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{what} not ready at {url} within {limit_s:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def served(tmp_path, installed_backend_dir):
    """`portable-ep serve` on a one-model repository, as the images run it."""
    model = build_mlp(tmp_path / "wide_mlp.onnx", seed=0, features=2048, hidden=16384, classes=16)
    inputs, outputs = onnx_signature(model)
    config = build_model_config(MODEL, inputs, outputs, max_batch_size=4, dynamic_batching_delay_us=0, providers="cpu")
    repository = write_model(tmp_path / "models", config, {"model.onnx": model}).parent
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "portable_ep.cli", "serve", str(repository), "--http-port", str(ports["http"]),
         "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
         "--backend-directory", str(installed_backend_dir), "--quiet"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{ports['http']}/v2/models/{MODEL}/ready", 180, process, "portable-ep serve")
        yield ports
    finally:
        _stop(process)
        log.close()


@pytest.fixture
def prometheus(tmp_path, served):
    """Debian's prometheus with the rule the PrometheusRule carries, scraping the server every second."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: run scripts/bootstrap.sh (it installs Debian's prometheus package)"
    rule = prometheus_rule("portable-ep-cpu", load_targets()["cpu"], "serving")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [{"job_name": "portable-ep", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{served['metrics']}"], "labels": LABELS}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/-/ready", 60, process, "prometheus")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)
        log.close()


def _query(prometheus_url: str, expr: str) -> list:
    body = json.loads(_get(f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"))
    assert body["status"] == "success", body
    return body["data"]["result"]


def _load(grpc_port: int, stop: threading.Event, errors: list, counts: list) -> None:
    import tritonclient.grpc as grpcclient

    done = 0
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        data = np.random.default_rng(0).standard_normal((1, 2048)).astype(np.float32)
        request = grpcclient.InferInput("x", list(data.shape), "FP32")
        request.set_data_from_numpy(data)
        while not stop.is_set():
            client.infer(MODEL, [request], client_timeout=30)
            done += 1
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure is reported by the test
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        counts.append(done)


def test_queue_time_metric_rises_under_load_and_falls_at_idle(served, prometheus):
    samples = []  # (phase, seconds since start, value)
    started = time.monotonic()

    def sample(phase: str) -> float:
        result = _query(prometheus, autoscaling.QUEUE_METRIC)
        value = float(result[0]["value"][1]) if result else float("nan")
        if result:
            assert {k: result[0]["metric"].get(k) for k in LABELS} == LABELS  # what prometheus-adapter maps to a pod
        samples.append((phase, round(time.monotonic() - started, 1), value))
        return value

    stop, errors, counts = threading.Event(), [], []
    threads = [threading.Thread(target=_load, args=(served["grpc"], stop, errors, counts), daemon=True)
               for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    try:
        while time.monotonic() - started < LOAD_S and not errors:
            time.sleep(2)
            sample("load")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors[:3]
    assert sum(counts) > 0, "no request was served"
    loaded = [v for phase, _, v in samples if phase == "load" and v == v]
    peak = max(loaded, default=float("nan"))
    idle_started = time.monotonic()
    value = float("nan")
    while time.monotonic() - idle_started < IDLE_LIMIT_S:
        time.sleep(2)
        value = sample("idle")
        if value < TARGET_US:
            break
    fell_after = time.monotonic() - idle_started
    figures = (f"{sum(counts)} requests in {LOAD_S:.0f} s at concurrency {CONCURRENCY}; "
               f"{autoscaling.QUEUE_METRIC} peak {peak / 1000:.1f} ms under load vs HPA target "
               f"{TARGET_US / 1000:.1f} ms; {value / 1000:.1f} ms {fell_after:.0f} s after the load stopped; samples {samples}")
    print(figures)
    assert peak > TARGET_US, figures
    assert value < TARGET_US, figures
