"""``openvino``: the OpenVINO runtime on CPU, reading OpenVINO IR or ONNX.

OpenVINO silently computes in bf16 on any CPU with AMX or AVX-512 BF16 (see
FACTS.md), which moves fp32 outputs by ~1e-3. We pin ``INFERENCE_PRECISION_HINT=f32``
for fp32 and make bf16 an explicit choice that needs native BF16 hardware.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from portable_ep.backends.base import (
    Availability,
    LoadRequest,
    Provider,
    ProviderUnavailable,
    Session,
    TensorInfo,
    check_supported_precision,
    select_variant,
)
from portable_ep.backends.cpu_features import detect_cpu_features
from portable_ep.backends.dtypes import bfloat16, is_bfloat16

INSTALL_HINT = "pip install 'portable-ep[openvino]'"

# Serving precision -> (variant precision to load, INFERENCE_PRECISION_HINT). bf16 is a
# runtime choice on the fp32 weights; int8/fp16 variants keep f32 for their float
# parts so their accuracy is what the exporter measured.
PRECISION_PLAN = {"fp32": ("fp32", "f32"), "bf16": ("fp32", "bf16"), "fp16": ("fp16", "f32"), "int8": ("int8", "f32"),
                  "int4": ("int4", "f32")}
# IR first (what the exporter tuned for OpenVINO), ONNX otherwise: OpenVINO reads both.
FORMATS = ("openvino", "onnx")

# Options a user may set as parameters "openvino.<key>", mapped to OpenVINO properties.
OPTION_PROPERTIES = {
    "performance_hint": "PERFORMANCE_HINT",
    "num_streams": "NUM_STREAMS",
    "inference_num_threads": "INFERENCE_NUM_THREADS",
    "enable_hyper_threading": "ENABLE_HYPER_THREADING",
    "cache_dir": "CACHE_DIR",
}


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise ProviderUnavailable(f"package missing: openvino is not installed; {INSTALL_HINT}") from None
    return openvino


def _shape_of(partial_shape) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


def _numpy_dtype(ov, element_type) -> np.dtype:
    """The numpy dtype of an OpenVINO element type.

    OpenVINO's own ``to_dtype()`` answers float16 for bf16 (its numpy views of bf16 data
    hold the bits in float16 arrays): bf16 is ``ml_dtypes.bfloat16`` here, as Triton's
    clients have it. An element type Triton cannot carry keeps OpenVINO's answer, and the
    config check refuses it by name.
    """
    if element_type == ov.Type.bf16:
        return bfloat16()
    if element_type == ov.Type.string:
        return np.dtype(np.object_)
    try:
        return np.dtype(element_type.to_dtype())
    except Exception:  # noqa: BLE001 - u4, f8e4m3, ...: numpy has no such dtype
        return np.dtype(np.void)


def _tensor_info(ov, port) -> TensorInfo:
    name = port.get_any_name()
    if port.get_partial_shape().rank.is_dynamic:
        # config.pbtxt fixes every tensor's rank; a port of any rank cannot be checked against it.
        raise ProviderUnavailable(f"OpenVINO reads tensor {name!r} with an unknown rank; serve the model with another provider")
    aliases = tuple(sorted(n for n in port.get_names() if n != name))
    return TensorInfo(name, _numpy_dtype(ov, port.get_element_type()), _shape_of(port.get_partial_shape()), aliases)


def _bfloat16_tensor(ov, array: np.ndarray):
    """A bfloat16 array as an OpenVINO bf16 Tensor (handing OpenVINO the ml_dtypes array reads it as float16)."""
    tensor = ov.Tensor(ov.Type.bf16, list(array.shape))
    if array.size:
        np.copyto(tensor.data.view(np.uint16), np.ascontiguousarray(array).view(np.uint16))
    return tensor


class RecompilingRequest:
    """An OpenVINO compiled model and its InferRequest, compiled afresh after any failed infer().

    A failed infer() leaves the CPU plugin's graph (shared by every InferRequest of the
    compiled model) with half-updated shapes: a 3×2×2 image sent to a CNN, and every
    32×32 image after it failed too, even from a fresh InferRequest (measured with
    OpenVINO 2026.4, FACTS.md). Only a new compiled model served again, so that is what
    a failure costs: one compile of the model already in memory (18 ms for a tiny CNN),
    paid by the bad request, never by the next good one. Outputs are read by index: the
    ports change with each compile.
    """

    def __init__(self, compile_model: Callable[[], object]):
        self._compile = compile_model
        self.compiled = compile_model()
        self._request = self.compiled.create_infer_request()

    def _renew(self) -> None:
        self.compiled = self._compile()
        self._request = self.compiled.create_infer_request()

    def infer(self, feeds: Mapping[str, np.ndarray]):
        if self._request is None:  # the compile after an earlier failure failed too (e.g. memory): try again
            self._renew()
        try:
            return self._request.infer(dict(feeds))
        except Exception:
            # Let the poisoned model go first: two compiled copies of a large model may not fit.
            self._request = self.compiled = None
            try:
                self._renew()
            except Exception:  # noqa: BLE001 - compiled at the next request; this request's own error is reported
                self._request = self.compiled = None
            raise

    def close(self) -> None:
        self._request = self.compiled = self._compile = None


class OpenVINOSession(Session):
    def __init__(self, ov, model_path, config: Mapping[str, str], precision: str):
        core = ov.Core()
        model = core.read_model(str(model_path))
        self._model = RecompilingRequest(lambda: core.compile_model(model, "CPU", dict(config)))
        compiled = self._model.compiled
        self.provider = "openvino"
        self.precision = precision
        self.device = "cpu"
        self._ov = ov
        self.inputs = [_tensor_info(ov, p) for p in compiled.inputs]
        self.outputs = [_tensor_info(ov, p) for p in compiled.outputs]
        actual = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.description = f"OpenVINO {ov.get_version().split('-')[0]} on CPU, {precision} (inference precision {actual}), {model_path.name}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict:
        # OpenVINO finds a port by any of its names, so feeds may use an alias.
        feeds = {name: (_bfloat16_tensor(self._ov, array) if is_bfloat16(array.dtype) else array) for name, array in feeds.items()}
        results = self._model.infer(feeds)
        # infer() copies outputs (share_outputs=False), so they outlive the next call. Outputs
        # are returned under the session's names of them (which the backend may have set to
        # the alias config.pbtxt uses); bf16 comes back as bits in a float16 array.
        return {info.name: (results[index].view(np.uint16).view(info.dtype) if is_bfloat16(info.dtype) else results[index])
                for index, info in enumerate(self.outputs)}

    def close(self) -> None:
        self._model.close()


class OpenVINOCpuProvider(Provider):
    name = "openvino"

    def probe(self) -> Availability:
        try:
            ov = _import_openvino()
            devices = ov.Core().available_devices
        except ProviderUnavailable as exc:
            return Availability.unavailable(str(exc))
        except Exception as exc:  # a broken plugin install should read as unavailable
            return Availability.unavailable(f"openvino failed to start: {exc}")
        if "CPU" not in devices:
            return Availability.unavailable(f"OpenVINO lists no CPU device (devices: {devices})")
        caps = ["fp32", "fp16", "int8", "int4"]
        if detect_cpu_features().native_bf16:
            caps.append("bf16")
        return Availability.available(devices=("CPU",), capabilities=caps)

    variant_formats = FORMATS

    def auto_precision_order(self, options):
        # The int8 IR is 2.9x fp32 on a CPU with VNNI (benchmarks/int8_throughput.py) but
        # 0.6-0.9x on an AVX2-only one (AMD EPYC, batch 1 and 8): without VNNI OpenVINO's
        # int8 kernels lose to its fp32 ones, so there fp32 comes first. fp16 IR runs with
        # f32 inference precision here (decompressed weights): fp32 speed, less accuracy.
        # bf16 is not a stored variant, so the manifest records no accuracy for it and
        # auto never picks it; ask for bf16 explicitly.
        if detect_cpu_features().vnni:
            return ("int8", "fp32", "fp16")
        return ("fp32", "int8", "fp16")

    def auto_precision_note(self, options):
        cpu = detect_cpu_features()
        if cpu.vnni:
            return ""
        return f"this CPU ({cpu.model_name or 'unknown'}) has no VNNI, where OpenVINO's int8 measured slower than fp32"

    def load(self, request: LoadRequest) -> Session:
        check_supported_precision(self.name, request.precision, tuple(PRECISION_PLAN))
        if request.precision == "bf16":
            cpu = detect_cpu_features()
            if not cpu.native_bf16:
                raise ProviderUnavailable(
                    f"bf16 needs native BF16 (AMX or AVX-512 BF16) and this CPU ({cpu.model_name}) has neither; use precision fp32"
                )
        stored, hint = PRECISION_PLAN[request.precision]
        variant = select_variant(self.name, request, self.variant_formats, stored)
        config = {"INFERENCE_PRECISION_HINT": hint}
        unknown = sorted(set(request.options) - set(OPTION_PROPERTIES))
        if unknown:
            raise ProviderUnavailable(
                f"unknown option(s) {', '.join('openvino.' + k for k in unknown)}; known: "
                + ", ".join("openvino." + k for k in OPTION_PROPERTIES)
            )
        for key, value in request.options.items():
            config[OPTION_PROPERTIES[key]] = value
        ov = _import_openvino()
        session = OpenVINOSession(ov, variant.path, config, request.precision)
        session.variant = variant
        return session
