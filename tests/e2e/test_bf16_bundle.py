"""A model with BF16 inputs and outputs, the way a user serves it: export, `repo add`, a real
tritonserver, requests over HTTP and gRPC with ml_dtypes.bfloat16 arrays, and `portable-ep check`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

from portable_ep.backends.dtypes import bfloat16
from portable_ep.client import infer_once
from portable_ep.exporters.bundle import ExportOptions, export_bundle
from portable_ep.triton_process import TritonServer

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "portable_ep.cli"]


def _bf16_model(path):
    """x (BF16 [2, 3]) -> y = x (BF16), z = float(x) (FP32)."""
    import onnx

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Cast", ["x"], ["z"], to=TensorProto.FLOAT)], "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 3]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_bf16_model_exports_serves_and_passes_check(tmp_path, installed_backend_dir):
    bundle = export_bundle(_bf16_model(tmp_path / "bf16.onnx"), tmp_path / "bundle",
                           ExportOptions(formats=("onnx",), precisions=("fp32",), progress=False)).bundle
    signature = json.loads((bundle / "manifest.json").read_text())["signature"]
    assert [(s["name"], s["dtype"]) for s in signature["inputs"]] == [("x", "bfloat16")]
    subprocess.run(CLI + ["repo", "add", str(bundle), "--repo", str(tmp_path / "models"), "--name", "bf16",
                          "--providers", "cpu"], check=True, capture_output=True, text=True)
    assert "data_type: TYPE_BF16" in (tmp_path / "models" / "bf16" / "config.pbtxt").read_text()

    x = np.array([[1.0, -2.5, 3.0], [0.5, 8.0, -1.0]]).astype(bfloat16())
    with TritonServer(tmp_path / "models", backend_directory=installed_backend_dir) as server:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            served = infer_once(protocol, url, "bf16", {"x": x})
            assert served["y"].dtype == bfloat16() and served["y"].view(np.uint16).tolist() == x.view(np.uint16).tolist()
            assert served["z"].dtype == np.float32 and served["z"].tolist() == x.astype(np.float32).tolist()
        check = subprocess.run(CLI + ["check", "--url", server.grpc_url, "--model", "bf16", "--bundle", str(bundle),
                                      "--concurrency", "1", "--out", str(tmp_path / "report")],
                               capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert "y: max |diff| 0" in check.stdout
