"""The ort-openvino provider's decisions, with ONNX Runtime injected (this machine has the CPU-only build)."""
from __future__ import annotations

import types

import pytest

from portable_ep.backends import LoadRequest, ProviderUnavailable, find_model_artifacts
from portable_ep.backends import ort_openvino
from portable_ep.backends.ort_openvino import OnnxRuntimeOpenVINOProvider
from portable_ep.backends.registry import ProviderRegistry

OPENVINO_EP = "OpenVINOExecutionProvider"


class FakeInferenceSession:
    active = [OPENVINO_EP, "CPUExecutionProvider"]
    created_with = None

    def __init__(self, path, sess_options=None, providers=()):
        FakeInferenceSession.created_with = providers

    def get_inputs(self):
        return []

    def get_outputs(self):
        return []

    def get_providers(self):
        return list(self.active)


def fake_onnxruntime(available):
    import onnxruntime as real

    return types.SimpleNamespace(
        __version__="9.9.9-fake",
        get_available_providers=lambda: list(available),
        InferenceSession=FakeInferenceSession,
        SessionOptions=real.SessionOptions,
        GraphOptimizationLevel=real.GraphOptimizationLevel,
    )


@pytest.fixture
def artifacts(tmp_path, model_files):
    (tmp_path / "model.onnx").write_bytes(model_files["mlp"].read_bytes())
    return find_model_artifacts(tmp_path)


def use(monkeypatch, available, active=(OPENVINO_EP, "CPUExecutionProvider")):
    monkeypatch.setattr(ort_openvino, "import_onnxruntime", lambda *a: fake_onnxruntime(available))
    FakeInferenceSession.active = list(active)


def test_registered_under_ort_openvino():
    assert isinstance(ProviderRegistry().get("ort-openvino"), OnnxRuntimeOpenVINOProvider)


def test_stock_onnxruntime_is_a_missing_package(monkeypatch):
    use(monkeypatch, ["CPUExecutionProvider"])
    availability = OnnxRuntimeOpenVINOProvider().probe()
    assert not availability.ok and availability.reason.startswith("package missing")
    assert "pip install onnxruntime-openvino (in place of onnxruntime)" in availability.reason


def test_this_machines_onnxruntime_has_no_openvino_ep():
    availability = OnnxRuntimeOpenVINOProvider().probe()
    assert not availability.ok and availability.reason.startswith("package missing")


def test_default_device_is_cpu_with_fp32_pinned(monkeypatch, artifacts):
    use(monkeypatch, [OPENVINO_EP, "CPUExecutionProvider"])
    provider = OnnxRuntimeOpenVINOProvider()
    assert provider.probe().ok
    session = provider.load(LoadRequest(artifacts))
    assert FakeInferenceSession.created_with[0] == (OPENVINO_EP, {"device_type": "CPU", "precision": "FP32"})
    assert session.device == "openvino:CPU"
    assert session.description.startswith(f"ONNX Runtime 9.9.9-fake {OPENVINO_EP} on openvino:CPU, fp32")


def test_device_type_option_reaches_the_ep(monkeypatch, artifacts):
    use(monkeypatch, [OPENVINO_EP, "CPUExecutionProvider"])
    session = OnnxRuntimeOpenVINOProvider().load(LoadRequest(artifacts, options={"device_type": "GPU.0", "cache_dir": "/tmp/c"}))
    assert FakeInferenceSession.created_with[0] == (OPENVINO_EP, {"device_type": "GPU.0", "cache_dir": "/tmp/c"})
    assert session.device == "openvino:GPU.0"


def test_silent_fallback_to_cpu_is_treated_as_unavailable(monkeypatch, artifacts):
    use(monkeypatch, [OPENVINO_EP, "CPUExecutionProvider"], active=["CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailable, match=r"could not start OpenVINOExecutionProvider on NPU and fell back to CPU"):
        OnnxRuntimeOpenVINOProvider().load(LoadRequest(artifacts, options={"device_type": "NPU"}))


def test_unknown_options_are_refused(monkeypatch, artifacts):
    use(monkeypatch, [OPENVINO_EP, "CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailable, match=r"unknown option\(s\) ort-openvino.device;"):
        OnnxRuntimeOpenVINOProvider().load(LoadRequest(artifacts, options={"device": "GPU"}))
