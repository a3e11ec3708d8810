"""The real cpu and openvino providers, in-process, against the ONNX Runtime reference."""
from __future__ import annotations

import numpy as np
import pytest

from inputs import bow_input, mlp_input
from portable_ep.backends import LoadRequest, ProviderUnavailable, find_model_artifacts
from portable_ep.backends.cpu_features import detect_cpu_features, parse_cpuinfo
from portable_ep.backends.onnxruntime_cpu import OnnxRuntimeCpuProvider
from portable_ep.backends.onnxruntime_cuda import OnnxRuntimeCudaProvider
from portable_ep.backends.openvino_cpu import OpenVINOCpuProvider


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory, model_files):
    folder = tmp_path_factory.mktemp("mlp-version")
    (folder / "model.onnx").write_bytes(model_files["mlp"].read_bytes())
    return folder


@pytest.fixture(scope="module")
def mlp_ir_dir(tmp_path_factory, model_files):
    import openvino as ov

    folder = tmp_path_factory.mktemp("mlp-ir-version")
    # save_model compresses weights to fp16 unless told not to: an fp32 IR needs compress_to_fp16=False.
    ov.save_model(ov.convert_model(str(model_files["mlp"])), str(folder / "model.xml"), compress_to_fp16=False)
    return folder


def _load(provider, folder, **kwargs):
    return provider.load(LoadRequest(find_model_artifacts(folder), **kwargs))


@pytest.mark.parametrize("provider", [OnnxRuntimeCpuProvider(), OpenVINOCpuProvider()], ids=["cpu", "openvino"])
def test_provider_matches_reference(provider, mlp_dir, reference_run):
    assert provider.probe().ok
    session = _load(provider, mlp_dir)
    assert [t.name for t in session.inputs] == ["x"] and session.inputs[0].dtype == np.float32
    feeds = mlp_input(6, seed=3)
    out = session.run(feeds)["logits"]
    assert np.max(np.abs(out - reference_run("mlp", feeds)["logits"])) <= 1e-5
    assert provider.name in session.provider


def test_openvino_pins_fp32_inference_precision(mlp_dir):
    session = _load(OpenVINOCpuProvider(), mlp_dir)
    assert "inference precision f32" in session.description


def test_openvino_reads_ir_without_onnx(mlp_ir_dir, reference_run):
    session = _load(OpenVINOCpuProvider(), mlp_ir_dir)
    feeds = mlp_input(3, seed=4)
    assert np.max(np.abs(session.run(feeds)["logits"] - reference_run("mlp", feeds)["logits"])) <= 1e-5
    with pytest.raises(ProviderUnavailable, match=r"cpu runs onnx models and .* has no fp32 one \(it has: openvino fp32 \(model.xml\)\)"):
        _load(OnnxRuntimeCpuProvider(), mlp_ir_dir)


def test_openvino_bf16_follows_the_cpu(mlp_dir, reference_run):
    provider = OpenVINOCpuProvider()
    if detect_cpu_features().native_bf16:
        session = _load(provider, mlp_dir, precision="bf16")
        assert "inference precision bf16" in session.description
        feeds = mlp_input(4, seed=5)
        assert np.max(np.abs(session.run(feeds)["logits"] - reference_run("mlp", feeds)["logits"])) < 0.1
    else:
        with pytest.raises(ProviderUnavailable, match="bf16 needs native BF16 .AMX or AVX-512 BF16."):
            _load(provider, mlp_dir, precision="bf16")


def test_unsupported_precision_and_unknown_options_are_refused(mlp_dir):
    with pytest.raises(ProviderUnavailable, match="cpu does not run precision 'bf16'"):
        _load(OnnxRuntimeCpuProvider(), mlp_dir, precision="bf16")
    with pytest.raises(ProviderUnavailable, match=r"unknown option\(s\) openvino.num_stream;"):
        _load(OpenVINOCpuProvider(), mlp_dir, options={"num_stream": "2"})
    with pytest.raises(ProviderUnavailable, match=r"unknown option\(s\) cpu.threads;"):
        _load(OnnxRuntimeCpuProvider(), mlp_dir, options={"threads": "2"})
    with pytest.raises(ProviderUnavailable, match="cpu.intra_op_num_threads='two' is not an integer"):
        _load(OnnxRuntimeCpuProvider(), mlp_dir, options={"intra_op_num_threads": "two"})


def test_provider_options_reach_the_runtime(mlp_dir):
    session = _load(OpenVINOCpuProvider(), mlp_dir, options={"num_streams": "1", "inference_num_threads": "1"})
    assert session._model.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    cpu = _load(OnnxRuntimeCpuProvider(), mlp_dir, options={"intra_op_num_threads": "1"})
    assert cpu.run(mlp_input(1, seed=0))["logits"].shape == (1, 4)


def test_cuda_says_why_it_cannot_run_here():
    availability = OnnxRuntimeCudaProvider().probe()
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert not availability.ok
        assert availability.reason.startswith("package missing") and "onnxruntime-gpu" in availability.reason
    elif not availability.ok:  # onnxruntime-gpu installed but no GPU
        assert availability.reason.startswith("no device")


def test_bag_of_words_on_both_providers_agrees(tmp_path, model_files, reference_run):
    (tmp_path / "model.onnx").write_bytes(model_files["bag_of_words"].read_bytes())
    feeds = bow_input(3, 7, seed=1)
    for provider in (OnnxRuntimeCpuProvider(), OpenVINOCpuProvider()):
        out = _load(provider, tmp_path).run(feeds)["logits"]
        assert np.max(np.abs(out - reference_run("bag_of_words", feeds)["logits"])) <= 1e-5


def test_cpuinfo_parsing():
    text = "vendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: sse avx512_vnni amx_bf16 amx_int8 amx_tile\n"
    features = parse_cpuinfo(text)
    assert features.vendor == "GenuineIntel" and features.amx_bf16 and features.amx_int8 and features.native_bf16
    assert features.avx512_vnni and not features.avx512_bf16
    plain = parse_cpuinfo("vendor_id : AuthenticAMD\nflags : sse avx2\n")
    assert not plain.native_bf16
    assert parse_cpuinfo("flags : avx512_bf16\n").native_bf16
