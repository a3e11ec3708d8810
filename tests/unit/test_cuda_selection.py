"""The cuda provider's decisions, with the GPU runtime and devices injected at the probe boundary.

The real path runs on GPU machines with benchmarks/cuda_provider_check.py (H100 figures in
the closing note of the foundation issue); here we check what it decides without one.
"""
from __future__ import annotations

import types

import pytest

from portable_ep.backends import LoadRequest, ProviderUnavailable, find_model_artifacts
from portable_ep.backends import onnxruntime_cuda
from portable_ep.backends.onnxruntime_cuda import OnnxRuntimeCudaProvider


class FakeInferenceSession:
    active = ["CUDAExecutionProvider", "CPUExecutionProvider"]
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
    monkeypatch.setattr(onnxruntime_cuda, "import_onnxruntime", lambda *a: ort)
    monkeypatch.setattr(onnxruntime_cuda, "nvidia_devices", lambda: tuple(devices))


def test_cpu_only_onnxruntime_is_a_missing_package(monkeypatch):
    use(monkeypatch, ["CPUExecutionProvider"], ["NVIDIA H100"])
    availability = OnnxRuntimeCudaProvider().probe()
    assert not availability.ok and availability.reason.startswith("package missing") and "onnxruntime-gpu" in availability.reason


def test_gpu_build_without_a_gpu_is_a_missing_device(monkeypatch):
    use(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], [])
    availability = OnnxRuntimeCudaProvider().probe()
    assert not availability.ok and availability.reason.startswith("no device") and "--gpus" in availability.reason


def test_gpu_present_loads_on_the_instance_device_with_fp32_math(monkeypatch, version_dir):
    use(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], ["NVIDIA H100"])
    FakeInferenceSession.active = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    provider = OnnxRuntimeCudaProvider()
    assert provider.probe().devices == ("NVIDIA H100",)
    session = provider.load(LoadRequest(find_model_artifacts(version_dir), device_id=3))
    cuda_name, cuda_options = FakeInferenceSession.created_with[0]
    assert cuda_name == "CUDAExecutionProvider"
    assert cuda_options == {"device_id": "3", "use_tf32": "0"}  # Triton's instance device, no TF32 under fp32
    assert session.description.startswith("ONNX Runtime 9.9.9-fake CUDAExecutionProvider on cuda:3")


def test_silent_fallback_to_cpu_is_treated_as_unavailable(monkeypatch, version_dir):
    use(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], ["NVIDIA H100"])
    FakeInferenceSession.active = ["CPUExecutionProvider"]
    with pytest.raises(ProviderUnavailable, match="driver: onnxruntime could not start CUDA and fell back to CPU"):
        OnnxRuntimeCudaProvider().load(LoadRequest(find_model_artifacts(version_dir)))


TRT_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_asked_of_a_build_without_it_is_a_missing_package(monkeypatch, version_dir):
    use(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], ["NVIDIA H100"])
    with pytest.raises(ProviderUnavailable, match=r"package missing: cuda.tensorrt is set .* no TensorrtExecutionProvider; pip install 'portable-ep\[tensorrt\]'"):
        OnnxRuntimeCudaProvider().load(LoadRequest(find_model_artifacts(version_dir), options={"tensorrt": "1"}))


def test_tensorrt_int8_refuses_a_dynamic_int8_variant_by_name(monkeypatch, version_dir):
    import json

    from portable_ep.backends.artifacts import MANIFEST_NAME, MANIFEST_SCHEMA_VERSION

    use(monkeypatch, TRT_BUILD, ["NVIDIA H100"])
    (version_dir / "model.int8.onnx").write_bytes((version_dir / "model.onnx").read_bytes())
    entry = {"format": "onnx", "within_budget": True, "status": "ok"}
    (version_dir / MANIFEST_NAME).write_text(json.dumps({"schema_version": MANIFEST_SCHEMA_VERSION, "variants": [
        {**entry, "precision": "fp32", "file": "model.onnx"},
        {**entry, "precision": "int8", "file": "model.int8.onnx", "quantization": "dynamic-fused"}]}))
    with pytest.raises(ProviderUnavailable, match="TensorRT int8 needs a static .QDQ. int8 ONNX variant; this bundle's is "
                                                  "dynamic-fused .*--int8-mode static"):
        OnnxRuntimeCudaProvider().load(LoadRequest(find_model_artifacts(version_dir), precision="int8", options={"tensorrt": "1"}))


def test_tensorrt_goes_first_with_an_engine_cache_on_the_instance_device(monkeypatch, version_dir, tmp_path):
    use(monkeypatch, TRT_BUILD, ["NVIDIA H100"])
    FakeInferenceSession.active = TRT_BUILD
    cache = tmp_path / "engines"
    session = OnnxRuntimeCudaProvider().load(LoadRequest(
        find_model_artifacts(version_dir), device_id=1, options={"tensorrt": "true", "trt_engine_cache_path": str(cache)},
    ))
    (trt_name, trt), (cuda_name, _), cpu = FakeInferenceSession.created_with
    assert (trt_name, cuda_name, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt["device_id"] == "1" and trt["trt_engine_cache_enable"] == "1" and trt["trt_engine_cache_path"] == str(cache)
    assert (trt["trt_fp16_enable"], trt["trt_int8_enable"]) == ("0", "0")  # fp32 means fp32 kernels
    assert cache.is_dir() and session.description.startswith("ONNX Runtime 9.9.9-fake TensorrtExecutionProvider on cuda:1")


@pytest.mark.parametrize("precision, fp16, int8", [("fp32", "0", "0"), ("fp16", "1", "0"), ("int8", "1", "1")])
def test_tensorrt_precision_flags(precision, fp16, int8, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    trt = onnxruntime_cuda.tensorrt_options({"trt_max_workspace_size": "1073741824"}, precision, 0)
    assert (trt["trt_fp16_enable"], trt["trt_int8_enable"]) == (fp16, int8)
    assert trt["trt_engine_cache_path"] == str(tmp_path / "portable-ep" / "tensorrt")
    assert trt["trt_max_workspace_size"] == "1073741824"


def test_tensorrt_engine_cache_can_be_turned_off():
    trt = onnxruntime_cuda.tensorrt_options({"trt_engine_cache_path": "off"}, "fp16", 0)
    assert "trt_engine_cache_enable" not in trt and "trt_engine_cache_path" not in trt


def test_tensorrt_that_falls_back_to_cuda_is_unavailable(monkeypatch, version_dir, tmp_path):
    use(monkeypatch, TRT_BUILD, ["NVIDIA H100"])
    FakeInferenceSession.active = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # libnvinfer missing at run time
    with pytest.raises(ProviderUnavailable, match=r"driver: onnxruntime could not start TensorRT and fell back to CUDAExecutionProvider .*libnvinfer"):
        OnnxRuntimeCudaProvider().load(LoadRequest(
            find_model_artifacts(version_dir), options={"tensorrt": "1", "trt_engine_cache_path": str(tmp_path)},
        ))
