"""``cpu``: ONNX Runtime's CPUExecutionProvider, the reference every target is compared with."""
from __future__ import annotations

from portable_ep.backends.base import (
    Availability,
    LoadRequest,
    Provider,
    ProviderUnavailable,
    Session,
    check_supported_precision,
    select_variant,
)
from portable_ep.backends.onnxruntime_common import OnnxRuntimeSession, import_onnxruntime, session_options

INSTALL_HINT = "pip install 'portable-ep[cpu]'"
# Each runs the ONNX variant stored in that precision (fp16 runs slowly on CPU, but runs;
# int4 is MatMulNBits, which ONNX Runtime has CPU kernels for).
PRECISIONS = ("fp32", "fp16", "int8", "int4")


class OnnxRuntimeCpuProvider(Provider):
    name = "cpu"

    def probe(self) -> Availability:
        try:
            ort = import_onnxruntime(self.name, INSTALL_HINT)
        except ProviderUnavailable as exc:
            return Availability.unavailable(str(exc))
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return Availability.unavailable(f"onnxruntime {ort.__version__} lists no CPUExecutionProvider")
        return Availability.available(devices=("cpu",), capabilities=PRECISIONS)

    variant_formats = ("onnx",)

    def auto_precision_order(self, options):
        # int8 (dynamic-fused) is 2x fp32 on MiniLM with VNNI and 1.3-1.7x on an AVX2-only
        # CPU (benchmarks/int8_throughput.py); fp16 on a CPU runs through casts and fp32
        # kernels, slower than fp32, so it comes last.
        return ("int8", "fp32", "fp16")

    def load(self, request: LoadRequest) -> Session:
        check_supported_precision(self.name, request.precision, PRECISIONS)
        variant = select_variant(self.name, request, self.variant_formats, request.precision)
        ort = import_onnxruntime(self.name, INSTALL_HINT)
        session = OnnxRuntimeSession(
            ort,
            variant.path,
            ["CPUExecutionProvider"],
            session_options(ort, request, self.name),
            provider_name=self.name,
            precision=request.precision,
            device="cpu",
        )
        session.variant = variant
        return session
