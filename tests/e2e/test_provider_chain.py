"""A long provider chain on a real tritonserver: each skipped provider says why, in the log and on /metrics.

- ``chain_fp32``: a dynamic-shape fp32 ONNX model behind ``cuda,rocm,npu,openvino,cpu``.
  On this CPU-only machine cuda and rocm lack their onnxruntime builds and npu refuses
  fp32 (its contract), so openvino serves it.
- ``npu_int8``: a static-shape bundle with an NNCF int8 IR behind ``npu`` alone. No NPU
  here, so it is served by the emulation path, which /metrics labels as such.
"""
from __future__ import annotations

import concurrent.futures
import shutil

import numpy as np
import pytest

from inputs import mlp_input
from npu_models import build_static_mlp, write_npu_bundle
from portable_ep.backends import LoadRequest, find_model_artifacts
from portable_ep.backends.openvino_cpu import OpenVINOCpuProvider
from portable_ep.client import infer_once
from portable_ep.exporters.onnx_signature import onnx_signature
from portable_ep.exporters.triton_config import build_model_config, write_model
from portable_ep.metrics_text import parse_series, served_providers
from portable_ep.triton_process import TritonServer

pytestmark = pytest.mark.e2e

FP32_TOLERANCE = 1e-5
LONG_CHAIN = "cuda,rocm,npu,openvino,cpu"


@pytest.fixture(scope="module")
def npu_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("npu-bundle")
    static_onnx = build_static_mlp(root / "static_mlp.onnx", seed=0, batch=1)
    return static_onnx, write_npu_bundle(root / "bundle", static_onnx, precisions=("int8",))


@pytest.fixture(scope="module")
def chain_server(tmp_path_factory, model_files, installed_backend_dir, npu_bundle):
    repository = tmp_path_factory.mktemp("chain") / "repository"

    inputs, outputs = onnx_signature(model_files["mlp"])
    config = build_model_config("chain_fp32", inputs, outputs, max_batch_size=8, providers=LONG_CHAIN)
    write_model(repository, config, {"model.onnx": model_files["mlp"]})

    static_onnx, bundle = npu_bundle
    inputs, outputs = onnx_signature(static_onnx)
    # The dynamic batcher may group requests; the backend's one-by-one retry keeps each
    # within the NPU's static batch of 1.
    config = build_model_config(
        "npu_int8", inputs, outputs, max_batch_size=4, dynamic_batching_delay_us=5000, providers="npu", precision="int8",
    )
    model_dir = write_model(repository, config, {})
    shutil.copytree(bundle, model_dir / "1", dirs_exist_ok=True)

    with TritonServer(repository, backend_directory=installed_backend_dir) as running:
        yield running


def _skipped_lines(log: str, model: str) -> dict:
    lines = {}
    for line in log.splitlines():
        if model in line and "skipped provider '" in line:
            name = line.split("skipped provider '", 1)[1].split("'", 1)[0]
            lines[name] = line
    return lines


def test_long_chain_falls_through_to_openvino_and_says_why(chain_server, reference_run):
    feeds = mlp_input(5, seed=21)
    served = infer_once("grpc", chain_server.grpc_url, "chain_fp32", feeds)["logits"]
    assert np.max(np.abs(served - reference_run("mlp", feeds)["logits"])) <= FP32_TOLERANCE

    metrics = chain_server.metrics_text()
    assert served_providers(metrics)["chain_fp32"]["provider"] == "openvino"

    logged = _skipped_lines(chain_server.log_text(), "chain_fp32")
    assert list(logged) == ["cuda", "rocm", "npu"]
    assert "package missing" in logged["cuda"] and "CUDAExecutionProvider" in logged["cuda"]
    assert "package missing" in logged["rocm"] and "MIGraphXExecutionProvider" in logged["rocm"]
    assert "npu contract: precision 'fp32'" in logged["npu"] and "set parameter precision int8" in logged["npu"]

    skipped = {s["skipped_provider"]: s["reason"] for s in parse_series(metrics, "portable_ep_provider_skipped") if s["model"] == "chain_fp32"}
    assert sorted(skipped) == ["cuda", "npu", "rocm"]  # /metrics orders series its own way; the log keeps chain order
    assert skipped["cuda"].startswith("package missing") and skipped["rocm"].startswith("package missing")
    assert skipped["npu"].startswith("npu contract: precision 'fp32'")


def test_static_int8_model_is_served_by_npu_labelled_emulated(chain_server, npu_bundle):
    info = served_providers(chain_server.metrics_text())["npu_int8"]
    assert info["provider"] == "npu" and info["precision"] == "int8"
    assert info["device"] == "npu-emulated" and "emulated" in info["description"]

    # The emulation runs the bundle's int8 IR on the CPU: served answers match OpenVINO run in-process.
    direct = OpenVINOCpuProvider().load(LoadRequest(find_model_artifacts(npu_bundle[1]), precision="int8"))
    # Concurrent single-row requests may be grouped by Triton; each still gets its own answer.
    requests = [mlp_input(1, seed=100 + i) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        served = list(pool.map(lambda f: infer_once("grpc", chain_server.grpc_url, "npu_int8", f)["logits"], requests))
    for feeds, logits in zip(requests, served):
        assert np.max(np.abs(logits - direct.run(feeds)["logits"])) <= 1e-5


def test_npu_refuses_a_request_that_breaks_the_static_shape(chain_server):
    with pytest.raises(Exception, match=r"input 'x' has shape \[2, 16\] but the npu model is compiled for the static shape \[1, 16\]"):
        infer_once("grpc", chain_server.grpc_url, "npu_int8", mlp_input(2, seed=3))
