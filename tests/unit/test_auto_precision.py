"""``precision: auto`` decisions: each provider's fastest stored precision that the manifest marks within budget."""
from __future__ import annotations

from pathlib import Path

import pytest

from portable_ep.backends.artifacts import ModelArtifacts, Variant
from portable_ep.backends.auto_precision import choose_auto_precision
from portable_ep.backends.base import ProviderUnavailable
from portable_ep.backends.cpu_features import CpuFeatures
from portable_ep.backends.npu import NpuProvider
from portable_ep.backends.onnxruntime_cpu import OnnxRuntimeCpuProvider
from portable_ep.backends.onnxruntime_cuda import OnnxRuntimeCudaProvider
from portable_ep.backends.onnxruntime_migraphx import OnnxRuntimeMIGraphXProvider
from portable_ep.backends.openvino_cpu import OpenVINOCpuProvider

ROOT = Path("/bundle")


def bundle(*variants, manifest=True) -> ModelArtifacts:
    """variants: (format, precision, within_budget)."""
    made = tuple(
        Variant(fmt, precision, ROOT / f"{fmt}.{precision}", within_budget=ok,
                accuracy={"outputs": {"logits": {"cosine": 0.99123}}} if manifest else {})
        for fmt, precision, ok in variants
    )
    return ModelArtifacts(ROOT, made, {"schema_version": 1} if manifest else None)


VNNI_CPU = CpuFeatures("GenuineIntel", "Xeon with VNNI", frozenset({"avx2", "avx512f", "avx512_vnni"}))
AVX2_CPU = CpuFeatures("AuthenticAMD", "EPYC without VNNI", frozenset({"avx", "avx2", "fma"}))

EVERY_VARIANT = bundle(*[(f, p, True) for f in ("onnx", "openvino") for p in ("fp32", "fp16", "int8")])


@pytest.mark.parametrize("provider, options, expected", [
    (OnnxRuntimeCpuProvider(), {}, ("onnx", "int8")),
    (OpenVINOCpuProvider(), {}, ("openvino", "int8")),
    (NpuProvider(), {}, ("openvino", "int8")),
    (OnnxRuntimeCudaProvider(), {}, ("onnx", "fp16")),  # CUDA EP: fp16 on tensor cores beats dequantized int8
    (OnnxRuntimeCudaProvider(), {"tensorrt": "1"}, ("onnx", "int8")),  # TensorRT has int8 kernels
    (OnnxRuntimeMIGraphXProvider(), {}, ("onnx", "fp16")),
])
def test_each_provider_takes_its_fastest_precision(provider, options, expected, monkeypatch):
    monkeypatch.setattr("portable_ep.backends.openvino_cpu.detect_cpu_features", lambda: VNNI_CPU)
    choice = choose_auto_precision(provider, EVERY_VARIANT, options)
    assert (choice.variant.format, choice.precision) == expected
    assert f"precision auto -> {expected[1]} on {provider.name}" in choice.reason and "cosine 0.99123" in choice.reason


@pytest.mark.parametrize("cpu, expected", [(VNNI_CPU, "int8"), (AVX2_CPU, "fp32")])
def test_openvino_puts_int8_first_only_on_a_cpu_with_vnni(cpu, expected, monkeypatch):
    # Measured: the int8 IR is 2.9x fp32 with VNNI, 0.6-0.9x on an AVX2-only EPYC.
    monkeypatch.setattr("portable_ep.backends.openvino_cpu.detect_cpu_features", lambda: cpu)
    choice = choose_auto_precision(OpenVINOCpuProvider(), EVERY_VARIANT, {})
    assert choice.precision == expected
    assert ("has no VNNI" in choice.reason) == (cpu is AVX2_CPU), choice.reason
    # The cpu provider's int8 (dynamic, ONNX Runtime) stays first either way: 1.3-1.7x fp32 without VNNI.
    assert choose_auto_precision(OnnxRuntimeCpuProvider(), EVERY_VARIANT, {}).precision == "int8"


def test_a_variant_out_of_budget_is_passed_over():
    artifacts = bundle(("onnx", "fp32", True), ("onnx", "fp16", True), ("onnx", "int8", False))
    choice = choose_auto_precision(OnnxRuntimeCpuProvider(), artifacts, {})
    assert choice.precision == "fp32" and "passed over int8: out of budget" in choice.reason


def test_only_variants_in_the_providers_formats_count(monkeypatch):
    monkeypatch.setattr("portable_ep.backends.openvino_cpu.detect_cpu_features", lambda: VNNI_CPU)
    # openvino reads ONNX too, but the cpu provider never takes an IR variant.
    artifacts = bundle(("onnx", "fp32", True), ("openvino", "int8", True))
    assert choose_auto_precision(OnnxRuntimeCpuProvider(), artifacts, {}).precision == "fp32"
    assert choose_auto_precision(OpenVINOCpuProvider(), artifacts, {}).precision == "int8"


def test_a_plain_model_file_serves_fp32_only():
    artifacts = bundle(("onnx", "fp32", None), manifest=False)
    choice = choose_auto_precision(OnnxRuntimeCpuProvider(), artifacts, {})
    assert choice.precision == "fp32" and "passed over int8: not in the bundle" in choice.reason


def test_nothing_within_budget_makes_the_provider_unavailable_with_the_reason():
    artifacts = bundle(("onnx", "fp32", True), ("openvino", "int8", False))
    with pytest.raises(ProviderUnavailable, match=r"precision auto: none of npu's precisions \(int8, fp16\) .*int8: out of budget; fp16: not in the bundle"):
        choose_auto_precision(NpuProvider(), artifacts, {})


def test_a_third_party_provider_without_an_order_gets_fp32():
    from portable_ep.backends.base import Provider

    class Plain(Provider):
        name = "plain"

        def probe(self):
            raise NotImplementedError

        def load(self, request):
            raise NotImplementedError

    assert choose_auto_precision(Plain(), EVERY_VARIANT, {}).precision == "fp32"
