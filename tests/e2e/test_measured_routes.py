"""Serve only what was measured, on a real tritonserver.

The model (``build_saturating_cast``) is one ONNX Runtime and OpenVINO answer differently,
so export measures OpenVINO out of budget on it, for the IR and for OpenVINO reading
``model.onnx``. Added with ``--providers openvino,cpu``:
- by default the server skips openvino, says why in the log and on /metrics, and answers
  with ONNX Runtime: the answers the export vouched for;
- with ``--allow-unmeasured`` (the operator's choice, by name) OpenVINO answers, and the
  log, /metrics and ``portable-ep check`` say the route was out of budget;
- exported without an IR, the OpenVINO route is measured at load and refused the same way.
A rank-1 output of a batched model (a scikit-learn KNN's ``label``) is served with its own
rank, the golden outputs' shape, not Triton's reshaped ``[batch, 1]``.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from portable_ep.client import infer_once
from portable_ep.exporters.bundle import ExportOptions, export_bundle
from portable_ep.exporters.repository import RepoOptions, add_to_repository
from portable_ep.metrics_text import served_providers
from portable_ep.models.tiny import build_saturating_cast
from portable_ep.triton_process import TritonServer

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "portable_ep.cli"]


@pytest.fixture(scope="module")
def routes_server(tmp_path_factory, installed_backend_dir):
    root = tmp_path_factory.mktemp("routes")
    model = build_saturating_cast(root / "cast.onnx")
    full = export_bundle(model, root / "cast", ExportOptions(precisions=("fp32",), progress=False)).bundle
    onnx_only = export_bundle(model, root / "cast-onnx", ExportOptions(precisions=("fp32",), formats=("onnx",),
                                                                        progress=False)).bundle
    repo = root / "repo"
    chain = dict(providers="openvino,cpu", precision="fp32")
    add_to_repository(full, repo, "cast", RepoOptions(**chain))
    subprocess.run(CLI + ["repo", "add", str(full), "--repo", str(repo), "--name", "cast_allowed", "--providers",
                          "openvino,cpu", "--precision", "fp32", "--allow-unmeasured"], check=True, capture_output=True)
    add_to_repository(onnx_only, repo, "cast_onnx", RepoOptions(**chain))
    knn = export_bundle(_knn_classifier(root / "knn.onnx"), root / "knn", ExportOptions(precisions=("fp32",),
                                                                                       progress=False)).bundle
    add_to_repository(knn, repo, "knn", RepoOptions(**chain))
    with TritonServer(repo, backend_directory=installed_backend_dir) as server:
        yield server, model, full, knn


def _knn_classifier(path):
    """A scikit-learn KNN converted as users do (skl2onnx, no ZipMap): ``label`` is rank 1, ``[batch]``."""
    from skl2onnx import to_onnx
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    model = to_onnx(KNeighborsClassifier(3).fit(x, (x[:, 0] > 0).astype(np.int64)), x[:1], options={"zipmap": False},
                    target_opset=17)
    path.write_bytes(model.SerializeToString())
    return path


def _feeds(seed: int) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((4, 16)).astype(np.float32)}


def _runtime(model, feeds) -> np.ndarray:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _model_log(server, model: str) -> str:
    return "\n".join(line for line in server.log_text().splitlines() if f"model '{model}'" in line)


def test_an_out_of_budget_route_is_skipped_with_its_figures_and_cpu_answers(routes_server):
    server, model = routes_server[:2]
    feeds = _feeds(1)
    served = infer_once("grpc", server.grpc_url, "cast", feeds)["y"]
    np.testing.assert_array_equal(served, _runtime(model, feeds))
    info = served_providers(server.metrics_text())["cast"]
    assert (info["provider"], info["route"]) == ("cpu", "measured-at-export")
    log = _model_log(server, "cast")
    assert "skipped provider 'openvino': the export measured openvino on model.onnx (fp32) out of budget (output 'y'" in log
    assert "route cpu on model.onnx (fp32): measured within budget at export" in log


def test_allow_unmeasured_serves_the_route_and_says_so_everywhere(routes_server, tmp_path):
    server, model, bundle = routes_server[:3]
    feeds = _feeds(2)
    served = infer_once("http", server.http_url, "cast_allowed", feeds)["y"]
    assert not np.array_equal(served, _runtime(model, feeds))  # OpenVINO saturates: the answers export refused
    info = served_providers(server.metrics_text())["cast_allowed"]
    assert (info["provider"], info["route"]) == ("openvino", "out-of-budget-allowed")
    assert "out of budget (output 'y'" in _model_log(server, "cast_allowed")
    assert "served because allow_unmeasured is set" in _model_log(server, "cast_allowed")

    result = subprocess.run(CLI + ["check", "--url", server.grpc_url, "--metrics-url", server.metrics_url, "--model",
                                   "cast_allowed", "--bundle", str(bundle), "--out", str(tmp_path), "--concurrency", "1",
                                   "--requests", "5"], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # accuracy fails, as the export said it would
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["target"]["route"] == "out-of-budget-allowed"
    assert "route: **out-of-budget-allowed**" in (tmp_path / "report.md").read_text()


def test_a_route_export_never_ran_is_measured_at_load_and_refused(routes_server):
    server, model = routes_server[:2]
    feeds = _feeds(3)
    np.testing.assert_array_equal(infer_once("grpc", server.grpc_url, "cast_onnx", feeds)["y"], _runtime(model, feeds))
    assert served_providers(server.metrics_text())["cast_onnx"]["provider"] == "cpu"
    assert ("skipped provider 'openvino': export never measured openvino on model.onnx (fp32); measured at load against "
            "the bundle's golden outputs: output 'y': max abs error") in _model_log(server, "cast_onnx")



def test_a_rank_one_output_keeps_its_rank(routes_server):
    server, knn = routes_server[0], routes_server[3]
    with np.load(knn / "reference" / "inputs.npz") as inputs, np.load(knn / "reference" / "outputs.npz") as golden:
        x, label, probabilities = inputs["X"][:6], golden["label"][:6], golden["probabilities"][:6]
    assert label.shape == (6,)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        served = infer_once(protocol, url, "knn", {"X": x})
        np.testing.assert_array_equal(served["label"], label)  # shape (6,) and values: not [6, 1]
        np.testing.assert_allclose(served["probabilities"], probabilities, rtol=1e-6)
    # OpenVINO cannot read the ai.onnx.ml graph: export recorded that route, the chain moved on to cpu.
    assert served_providers(server.metrics_text())["knn"]["provider"] == "cpu"


def test_doctor_lists_each_models_routes_before_anything_loads(routes_server):
    server = routes_server[0]
    result = subprocess.run(CLI + ["doctor", "--json", "--repo", str(server.model_repository)], capture_output=True,
                            text=True, check=True)
    rows = {(r["model"], r["provider"]): r for r in json.loads(result.stdout)["routes"]}
    assert rows["cast", "openvino"]["status"] == "out of budget"
    assert rows["cast", "openvino"]["detail"].startswith("skipped at load: output 'y': max abs error")
    assert rows["cast", "cpu"]["status"] == "within budget"
    assert rows["cast_allowed", "openvino"]["detail"] == "served (allow_unmeasured is set)"
    assert (rows["cast_onnx", "openvino"]["status"], rows["cast_onnx", "openvino"]["detail"]) == (
        "unmeasured", "measured against the golden data at load")
