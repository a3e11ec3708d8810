"""Routes (provider, variant file, precision): what export recorded, and which the loader lets serve.

Real ONNX Runtime and OpenVINO sessions on bundles exported in the test; the e2e proof
through tritonserver is tests/e2e/test_measured_routes.py.
"""
from __future__ import annotations

import json

import pytest

from portable_ep.backends import LoadRequest, find_model_artifacts
from portable_ep.backends.base import ProviderUnavailable
from portable_ep.backends.chain import NoProviderAvailable
from portable_ep.backends.openvino_cpu import OpenVINOCpuProvider
from portable_ep.backends.routes import OUT_OF_BUDGET, UNMEASURED, WITHIN_BUDGET, route_verdict, routes_of_entry
from portable_ep.exporters.bundle import ExportOptions, export_bundle
from portable_ep.models.tiny import build_saturating_cast
from portable_ep.python_backend.model_config import ServingConfig, TensorSpec
from portable_ep.python_backend.model_loader import resolve_session
from portable_ep.python_backend.route_check import (
    MEASURED_AT_EXPORT,
    MEASURED_AT_LOAD,
    NOTHING_TO_MEASURE,
    OUT_OF_BUDGET_ALLOWED,
    UNMEASURED_ALLOWED,
)


def test_legacy_entries_get_the_route_their_format_was_measured_on():
    assert routes_of_entry({"format": "onnx", "within_budget": True}) == {"cpu": {"within_budget": True}}
    assert routes_of_entry({"format": "openvino", "within_budget": False, "problems": ["cosine 0.5"]}) == {
        "openvino": {"within_budget": False, "problems": ["cosine 0.5"]}}
    assert routes_of_entry({"format": "onnx"}) == {}  # a hand-made manifest: nothing measured
    table = {"cpu": {"within_budget": True}, "openvino": {"within_budget": False}}
    assert routes_of_entry({"format": "onnx", "within_budget": True, "routes": table}) == table


def test_a_verdict_holds_only_for_the_provider_and_precision_that_were_measured():
    routes = {"cpu": {"within_budget": True}, "openvino": {"within_budget": False, "problems": ["cosine 0.78"]}}
    assert route_verdict(routes, "cpu", "fp32").status == WITHIN_BUDGET
    assert route_verdict(routes, "openvino", "fp32").status == OUT_OF_BUDGET
    assert "cosine 0.78" in route_verdict(routes, "openvino", "fp32").describe()
    assert route_verdict(routes, "cuda", "fp32").status == UNMEASURED
    # bf16 computed on the fp32 weights is a route export never ran.
    assert route_verdict(routes, "cpu", "fp32", serving_precision="bf16").status == UNMEASURED


@pytest.mark.parametrize("vnni", [True, False])
def test_an_eight_bit_int8_route_holds_only_on_a_cpu_with_vnni(monkeypatch, vnni):
    """8-bit int8 weights were measured on a CPU with VNNI; without it the sums saturate: measure again."""
    from types import SimpleNamespace

    from portable_ep.backends import routes as routes_module

    monkeypatch.setattr(routes_module, "detect_cpu_features", lambda: SimpleNamespace(vnni=vnni))
    table = {"openvino": routes_module.route_entry(True, requires_cpu="vnni")}
    assert table["openvino"] == {"within_budget": True, "requires_cpu": "vnni"}
    assert route_verdict(table, "openvino", "int8").status == (WITHIN_BUDGET if vnni else UNMEASURED)


def _config(parameters: dict, output: str = "y", output_dims: tuple = (16,)) -> ServingConfig:
    import numpy as np

    spec = lambda name, dims: TensorSpec(name, np.dtype(np.float32), dims)  # noqa: E731
    return ServingConfig(name="m", max_batch_size=8, inputs=(spec("x", (16,)),), outputs=(spec(output, output_dims),),
                         parameters=parameters)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("routes")
    model = build_saturating_cast(root / "cast.onnx")
    options = dict(progress=False, precisions=("fp32",))
    return {
        # OpenVINO saturates where ONNX Runtime wraps: export measures the IR, and OpenVINO reading
        # model.onnx, out of budget.
        "cast": export_bundle(model, root / "cast", ExportOptions(**options)).bundle,
        # No IR planned: export never runs OpenVINO, so its route is measured when the model loads.
        "cast_onnx": export_bundle(model, root / "cast-onnx", ExportOptions(formats=("onnx",), **options)).bundle,
    }


def test_export_records_openvino_reading_onnx_when_the_ir_was_left_out(bundles):
    manifest = json.loads((bundles["cast"] / "manifest.json").read_text())
    onnx_fp32 = next(v for v in manifest["variants"] if (v["format"], v["precision"]) == ("onnx", "fp32"))
    assert onnx_fp32["routes"]["cpu"] == {"within_budget": True}
    assert onnx_fp32["routes"]["openvino"]["within_budget"] is False
    assert any("max abs error" in p for p in onnx_fp32["routes"]["openvino"]["problems"])
    ir = next(v for v in manifest["variants"] if (v["format"], v["precision"]) == ("openvino", "fp32"))
    assert ir["file"] is None and ir["routes"] == {"openvino": {"within_budget": False, "problems": ir["problems"]}}


def test_the_provider_refuses_a_route_export_measured_out_of_budget(bundles):
    artifacts = find_model_artifacts(bundles["cast"])
    with pytest.raises(ProviderUnavailable, match=r"the export measured openvino on model\.onnx \(fp32\) out of budget "
                                                  r"\(output 'y': max abs error .*allow_unmeasured=true"):
        OpenVINOCpuProvider().load(LoadRequest(artifacts, precision="fp32"))
    session = OpenVINOCpuProvider().load(LoadRequest(artifacts, precision="fp32", allow_unmeasured=True))
    assert session.variant.path.name == "model.onnx"
    session.close()


def test_the_chain_falls_back_past_an_out_of_budget_route_and_serves_it_only_when_allowed(bundles):
    resolved = resolve_session(_config({"providers": "openvino,cpu"}), bundles["cast"])
    assert resolved.resolution.provider == "cpu" and resolved.resolution.note.label == MEASURED_AT_EXPORT
    assert "out of budget" in resolved.resolution.skipped[0].reason
    resolved.resolution.session.close()

    allowed = resolve_session(_config({"providers": "openvino,cpu", "allow_unmeasured": "true"}), bundles["cast"])
    assert allowed.resolution.provider == "openvino" and allowed.resolution.note.label == OUT_OF_BUDGET_ALLOWED
    allowed.resolution.session.close()


def test_an_unmeasured_route_is_measured_at_load_and_refused_with_its_figures(bundles):
    resolved = resolve_session(_config({"providers": "openvino,cpu"}), bundles["cast_onnx"])
    assert resolved.resolution.provider == "cpu"
    reason = resolved.resolution.skipped[0].reason
    assert reason.startswith("export never measured openvino on model.onnx (fp32); measured at load against the bundle's "
                             "golden outputs: output 'y': max abs error"), reason
    resolved.resolution.session.close()

    with pytest.raises(NoProviderAvailable, match="measured at load"):
        resolve_session(_config({"providers": "openvino"}), bundles["cast_onnx"])

    allowed = resolve_session(_config({"providers": "openvino", "allow_unmeasured": "1"}), bundles["cast_onnx"])
    assert allowed.resolution.note.label == UNMEASURED_ALLOWED and "unmeasured" in allowed.resolution.note.line
    allowed.resolution.session.close()


def test_an_unmeasured_route_within_budget_at_load_serves(tmp_path, model_files):
    bundle = export_bundle(model_files["mlp"], tmp_path / "mlp", ExportOptions(formats=("onnx",), precisions=("fp32",),
                                                                               progress=False)).bundle
    resolved = resolve_session(_config({"providers": "openvino"}, "logits", (4,)), bundle)
    assert resolved.resolution.provider == "openvino" and resolved.resolution.note.label == MEASURED_AT_LOAD
    resolved.resolution.session.close()


def test_a_plain_model_file_is_served_as_given(tmp_path, model_files):
    import shutil

    shutil.copy(model_files["mlp"], tmp_path / "model.onnx")
    resolved = resolve_session(_config({"providers": "openvino"}, "logits", (4,)), tmp_path)
    assert resolved.resolution.note.label == NOTHING_TO_MEASURE
    resolved.resolution.session.close()
