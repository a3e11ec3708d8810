"""The rocm (MIGraphX) provider's decisions, with the runtime and the AMD device listing injected.

There is no AMD GPU here; what is checked is what the provider decides for each
situation a real machine presents: a CPU-only onnxruntime, a MIGraphX build
without a GPU, a GPU, and ONNX Runtime's silent fallback to CPU.
"""
from __future__ import annotations

import types

import pytest

from portable_ep.backends import LoadRequest, ProviderUnavailable, find_model_artifacts
from portable_ep.backends import onnxruntime_migraphx
from portable_ep.backends.onnxruntime_migraphx import OnnxRuntimeMIGraphXProvider, _kfd_gpu_nodes
from portable_ep.backends.registry import ProviderRegistry

MIGRAPHX = "MIGraphXExecutionProvider"


class FakeInferenceSession:
    active = [MIGRAPHX, "CPUExecutionProvider"]
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
def version_dir(tmp_path, model_files):
    (tmp_path / "model.onnx").write_bytes(model_files["mlp"].read_bytes())
    return tmp_path


def use(monkeypatch, available, devices):
    ort = fake_onnxruntime(available)
    monkeypatch.setattr(onnxruntime_migraphx, "import_onnxruntime", lambda *a: ort)
    monkeypatch.setattr(onnxruntime_migraphx, "amd_gpus", lambda: tuple(devices))


def test_registered_under_rocm():
    assert isinstance(ProviderRegistry().get("rocm"), OnnxRuntimeMIGraphXProvider)


def test_this_machines_onnxruntime_has_no_migraphx():
    availability = OnnxRuntimeMIGraphXProvider().probe()
    assert not availability.ok and availability.reason.startswith("package missing") and "onnxruntime-migraphx" in availability.reason


def test_cpu_only_onnxruntime_is_a_missing_package(monkeypatch):
    use(monkeypatch, ["CPUExecutionProvider"], ["AMD Instinct MI300X"])
    availability = OnnxRuntimeMIGraphXProvider().probe()
    assert not availability.ok and availability.reason.startswith("package missing")
    assert "pip install onnxruntime-migraphx" in availability.reason and "rocm image" in availability.reason


def test_migraphx_build_without_a_gpu_is_a_missing_device(monkeypatch):
    use(monkeypatch, [MIGRAPHX, "CPUExecutionProvider"], [])
    availability = OnnxRuntimeMIGraphXProvider().probe()
    assert not availability.ok and availability.reason.startswith("no device") and "/dev/kfd" in availability.reason


def test_gpu_present_loads_on_the_instance_device(monkeypatch, version_dir):
    use(monkeypatch, [MIGRAPHX, "CPUExecutionProvider"], ["AMD Instinct MI300X"])
    FakeInferenceSession.active = [MIGRAPHX, "CPUExecutionProvider"]
    provider = OnnxRuntimeMIGraphXProvider()
    assert provider.probe().devices == ("AMD Instinct MI300X",)
    session = provider.load(LoadRequest(find_model_artifacts(version_dir), device_id=2, options={"exhaustive_tune": "1"}))
    assert FakeInferenceSession.created_with[0] == (MIGRAPHX, {"device_id": "2", "migraphx_exhaustive_tune": "1"})
    assert FakeInferenceSession.created_with[1] == "CPUExecutionProvider"
    assert session.device == "rocm:2"
    assert session.description.startswith(f"ONNX Runtime 9.9.9-fake {MIGRAPHX} on rocm:2, fp32")


def test_silent_fallback_to_cpu_is_treated_as_unavailable(monkeypatch, version_dir):
    use(monkeypatch, [MIGRAPHX, "CPUExecutionProvider"], ["AMD Instinct MI300X"])
    FakeInferenceSession.active = ["CPUExecutionProvider"]
    with pytest.raises(ProviderUnavailable, match="driver: onnxruntime could not start MIGraphX and fell back to CPU"):
        OnnxRuntimeMIGraphXProvider().load(LoadRequest(find_model_artifacts(version_dir)))


def test_int8_and_unknown_options_are_refused(monkeypatch, version_dir):
    use(monkeypatch, [MIGRAPHX, "CPUExecutionProvider"], ["AMD Instinct MI300X"])
    with pytest.raises(ProviderUnavailable, match="rocm does not run precision 'int8'"):
        OnnxRuntimeMIGraphXProvider().load(LoadRequest(find_model_artifacts(version_dir), precision="int8"))
    with pytest.raises(ProviderUnavailable, match=r"unknown option\(s\) rocm.fp16;"):
        OnnxRuntimeMIGraphXProvider().load(LoadRequest(find_model_artifacts(version_dir), options={"fp16": "1"}))


def test_kfd_topology_counts_only_nodes_with_simd_units(tmp_path):
    for node, simd in (("0", 0), ("1", 304)):  # node 0: the CPU, node 1: a GPU
        (tmp_path / node).mkdir()
        (tmp_path / node / "properties").write_text(f"cpu_cores_count 64\nsimd_count {simd}\nvendor_id 4098\n")
    assert _kfd_gpu_nodes(str(tmp_path / "*" / "properties")) == ("kfd node 1",)
