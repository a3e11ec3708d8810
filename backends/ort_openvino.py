"""``ort-openvino``: ONNX Runtime's OpenVINOExecutionProvider (the onnxruntime-openvino package).

For sites that standardise on ONNX Runtime's API but want OpenVINO's kernels. The
``openvino`` provider runs OpenVINO's own runtime instead, which also works where
this EP lists no device (see FACTS.md: the plugin EP skips non-Intel CPUs). ORT
falls back to CPU silently when the EP cannot start, so the session's providers
are checked after creation.
"""
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

EP_NAME = "OpenVINOExecutionProvider"
DEFAULT_DEVICE_TYPE = "CPU"
# "<provider>.<key>" options passed through to the EP; device_type picks CPU, GPU, NPU, AUTO:GPU,CPU, ...
OPENVINO_OPTION_KEYS = ("device_type", "precision", "num_of_threads", "cache_dir", "num_streams")
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = "pip install onnxruntime-openvino (in place of onnxruntime)"


class OnnxRuntimeOpenVINOProvider(Provider):
    name = "ort-openvino"

    def probe(self) -> Availability:
        try:
            ort = import_onnxruntime(self.name, INSTALL_HINT)
        except ProviderUnavailable as exc:
            return Availability.unavailable(str(exc))
        if EP_NAME not in ort.get_available_providers():
            return Availability.unavailable(
                f"package missing: this onnxruntime {ort.__version__} build has no {EP_NAME}; {INSTALL_HINT}"
            )
        # Which OpenVINO device the EP uses is an option (device_type), known only at load.
        return Availability.available(devices=(f"openvino:{DEFAULT_DEVICE_TYPE} (default)",), capabilities=PRECISIONS)

    variant_formats = ("onnx",)

    def auto_precision_order(self, options):
        # The ONNX variants (int8 is the cpu provider's recipe). Not re-measured through the
        # OpenVINO EP on a CPU without VNNI, where the openvino provider puts fp32 first.
        return ("int8", "fp32", "fp16")

    def load(self, request: LoadRequest) -> Session:
        check_supported_precision(self.name, request.precision, PRECISIONS)
        variant = select_variant(self.name, request, self.variant_formats, request.precision)
        ort = import_onnxruntime(self.name, INSTALL_HINT)
        device_type = request.options.get("device_type") or DEFAULT_DEVICE_TYPE
        ep_options = {"device_type": device_type}
        if request.precision == "fp32" and device_type == "CPU" and "precision" not in request.options:
            # fp32 means fp32: OpenVINO would otherwise pick bf16 on a bf16-capable CPU (FACTS.md).
            # Only on CPU: the EP refuses FP32 for NPU, and GPU users choose with ort-openvino.precision.
            ep_options["precision"] = "FP32"
        for key in OPENVINO_OPTION_KEYS:
            if key in request.options and key != "device_type":
                ep_options[key] = request.options[key]
        session = OnnxRuntimeSession(
            ort,
            variant.path,
            [(EP_NAME, ep_options), "CPUExecutionProvider"],
            session_options(ort, request, self.name, OPENVINO_OPTION_KEYS),
            provider_name=self.name,
            precision=request.precision,
            device=f"openvino:{device_type}",
        )
        session.device = f"openvino:{device_type}"
        if session.active_providers[0] != EP_NAME:
            session.close()
            raise ProviderUnavailable(
                f"driver: onnxruntime could not start {EP_NAME} on {device_type} and fell back to CPU "
                f"(session providers {list(session.active_providers)}); check ort-openvino.device_type and the OpenVINO libraries"
            )
        session.variant = variant
        return session
