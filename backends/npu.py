"""``npu``: an honest NPU contract stub on OpenVINO.

NPUs compile a fixed graph: static input shapes, low precision (int8 or fp16) and a
limited set of operations. This provider enforces that contract at load time, so a
model that would not run on a real NPU is refused here with the reason, on any
machine. When OpenVINO sees an ``NPU`` device the model is compiled there; otherwise
it is compiled on the CPU and labelled ``npu (emulated on CPU)`` everywhere (session
device, description, /metrics) -- it never passes for a real NPU.

Options (config.pbtxt parameters ``npu.<key>``):

- ``static_shapes``: ``input_ids:1x128,attention_mask:1x128`` fixes dynamic inputs
  with OpenVINO ``Model.reshape`` before the contract is checked;
- ``cache_dir``: OpenVINO ``CACHE_DIR`` for compiled blobs (NPU compiles are slow), by
  default ``$XDG_CACHE_HOME/portable-ep/npu``; ``off`` turns it off. The session
  description says when a load came from the cache;
- ``require_device``: ``true`` refuses the emulation path when no NPU exists.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from portable_ep.backends.base import (
    Availability,
    LoadRequest,
    Provider,
    ProviderUnavailable,
    Session,
    TensorInfo,
    option_is_true,
    select_variant,
)
from portable_ep.backends.cache_dirs import cache_dir_option
from portable_ep.backends.openvino_cpu import RecompilingRequest

INSTALL_HINT = "pip install 'portable-ep[openvino]'"
PRECISIONS = ("int8", "fp16")
# The exporter's IR is what NPU compilers are tuned for; OpenVINO reads ONNX (QDQ) too.
FORMATS = ("openvino", "onnx")
OPTION_KEYS = ("static_shapes", "cache_dir", "require_device")
EMULATED_DEVICE = "npu-emulated"

#: OpenVINO op types (``Node.get_type_name()``) an NPU compiler typically accepts. Kept
#: conservative: an op outside it is refused at load rather than failing at compile
#: time on the device, or worse, running on a CPU fallback the user never asked for.
NPU_SUPPORTED_OPS = frozenset({
    # graph plumbing
    "Parameter", "Result", "Constant", "Convert", "FakeQuantize",
    # linear algebra and convolution
    "MatMul", "Convolution", "GroupConvolution", "ScaledDotProductAttention",
    # element-wise arithmetic and activations
    "Add", "Multiply", "Subtract", "Divide", "Power", "Sqrt", "Exp", "Log", "Floor", "Erf",
    "Maximum", "Minimum", "Clamp", "Relu", "PRelu", "Sigmoid", "Tanh", "Gelu", "HSwish",
    "Swish", "SoftPlus", "Mish", "Softmax",
    # comparisons and selection
    "Equal", "Less", "Greater", "LogicalNot", "Select",
    # normalisation and reductions
    "MVN", "NormalizeL2", "BatchNormInference", "ReduceMean", "ReduceSum", "ReduceMax",
    # pooling and resizing
    "MaxPool", "AvgPool", "Interpolate",
    # layout and indexing
    "Reshape", "Transpose", "Concat", "Gather", "Squeeze", "Unsqueeze", "ShapeOf", "Broadcast",
    "Slice", "StridedSlice", "Split", "VariadicSplit", "Pad", "Tile", "Range",
})


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise ProviderUnavailable(f"package missing: openvino is not installed; {INSTALL_HINT}") from None
    return openvino


def visible_devices(core) -> Tuple[str, ...]:
    """OpenVINO's device list; a function of its own so tests can pretend an NPU exists."""
    return tuple(core.available_devices)


def _dims_text(partial_shape) -> str:
    return "x".join(str(d.get_length()) if d.is_static else "?" for d in partial_shape)


def parse_static_shapes(text: str) -> Dict[str, Tuple[int, ...]]:
    """``"input_ids:1x128, attention_mask:1x128"`` → ``{"input_ids": (1, 128), ...}``."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        # rpartition: tensor names such as "input:0" may themselves hold a colon.
        name, colon, dims = part.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not colon or not name or not shape or min(shape) < 1:
            raise ProviderUnavailable(
                f"option npu.static_shapes: {part!r} is not NAME:DIMS; write e.g. input_ids:1x128,attention_mask:1x128"
            )
        shapes[name] = shape
    return shapes


def apply_static_shapes(ov, model, shapes: Mapping[str, Sequence[int]]) -> None:
    """Fix the named inputs' shapes in place (OpenVINO ``Model.reshape``)."""
    names = {name for port in model.inputs for name in port.get_names()}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise ProviderUnavailable(
            f"option npu.static_shapes names {', '.join(unknown)}, which the model does not have "
            f"(inputs: {', '.join(sorted(p.get_any_name() for p in model.inputs))})"
        )
    try:
        model.reshape({name: ov.PartialShape(list(dims)) for name, dims in shapes.items()})
    except Exception as exc:  # OpenVINO explains why a shape does not fit the graph
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ProviderUnavailable(f"option npu.static_shapes does not fit the model: {first_line}") from None


def dynamic_inputs(model) -> Dict[str, str]:
    """Inputs whose shape is not fully static, name → shape text with ``?`` for free dims."""
    return {p.get_any_name(): _dims_text(p.get_partial_shape()) for p in model.inputs if p.get_partial_shape().is_dynamic}


def unsupported_ops(model, allowed=NPU_SUPPORTED_OPS) -> Counter:
    """Op type → count for every op in the model outside the allow-list."""
    return Counter(op.get_type_name() for op in model.get_ordered_ops() if op.get_type_name() not in allowed)


def check_npu_contract(model) -> None:
    """Raise ProviderUnavailable naming every way ``model`` breaks the NPU contract's shapes and ops."""
    dynamic = dynamic_inputs(model)
    if dynamic:
        example = ",".join(f"{name}:{shape.replace('?', '1')}" for name, shape in dynamic.items())
        raise ProviderUnavailable(
            "npu contract: input shapes must be static, and "
            + ", ".join(f"{name} is [{shape}]" for name, shape in dynamic.items())
            + f"; set parameter npu.static_shapes (e.g. {example}) or export the model with fixed shapes"
        )
    unsupported = unsupported_ops(model)
    if unsupported:
        listed = ", ".join(f"{op} x{count}" for op, count in sorted(unsupported.items()))
        raise ProviderUnavailable(
            f"npu contract: the model uses ops an NPU does not run ({listed}); "
            "rewrite or remove them in the model, or put another provider first in the chain"
        )


class NpuSession(Session):
    """A model compiled for the NPU (or its CPU emulation) with fixed input shapes."""

    def __init__(self, compile_model, precision: str, device: str, description: str):
        self._model = RecompilingRequest(compile_model)
        compiled = self._model.compiled
        self.provider = "npu"
        self.precision = precision
        self.device = device
        self.description = description
        self.inputs = [_tensor_info(p) for p in compiled.inputs]
        self.outputs = [_tensor_info(p) for p in compiled.outputs]
        self._static_shapes = {info.name: tuple(info.shape) for info in self.inputs}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict:
        # An NPU graph runs exactly one shape; say so instead of letting the runtime
        # fail (or, on CPU emulation, silently accept a shape a real NPU would refuse).
        for name, array in feeds.items():
            static = self._static_shapes.get(name)
            if static is not None and tuple(array.shape) != static:
                raise ValueError(
                    f"input {name!r} has shape {list(array.shape)} but the npu model is compiled for the static shape "
                    f"{list(static)}; send exactly that shape (batch size {static[0] if static else '-'} per request)"
                )
        results = self._model.infer(feeds)
        return {info.name: results[index] for index, info in enumerate(self.outputs)}

    def close(self) -> None:
        self._model.close()


def _tensor_info(port) -> TensorInfo:
    shape = tuple(d.get_length() for d in port.get_partial_shape())
    return TensorInfo(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()), shape)


class NpuProvider(Provider):
    name = "npu"

    def probe(self) -> Availability:
        try:
            ov = _import_openvino()
            devices = visible_devices(ov.Core())
        except ProviderUnavailable as exc:
            return Availability.unavailable(str(exc))
        except Exception as exc:  # a broken plugin install should read as unavailable
            return Availability.unavailable(f"openvino failed to start: {exc}")
        if "NPU" in devices:
            return Availability.available(devices=("NPU",), capabilities=PRECISIONS)
        if "CPU" not in devices:
            return Availability.unavailable(f"no device: OpenVINO lists neither NPU nor CPU (devices: {', '.join(devices) or 'none'})")
        return Availability.available(devices=("emulated",), capabilities=(*PRECISIONS, "emulated on CPU: no NPU device"))

    variant_formats = FORMATS

    def auto_precision_order(self, options):
        return ("int8", "fp16")  # an NPU's native int8 first; fp32 is not in its contract

    def load(self, request: LoadRequest) -> Session:
        unknown = sorted(set(request.options) - set(OPTION_KEYS))
        if unknown:
            raise ProviderUnavailable(
                f"unknown option(s) {', '.join('npu.' + k for k in unknown)}; known: {', '.join('npu.' + k for k in OPTION_KEYS)}"
            )
        if (request.artifacts.manifest or {}).get("task") == "text-generation":
            # The contract is one static-shape graph compiled ahead of time; a decoder's
            # cache grows by one position per token, so every step would be a new shape.
            raise ProviderUnavailable(
                "npu contract: generative models are not served on the NPU (static shapes compiled ahead of time, "
                "and a decoder's KV cache grows every token); serve this bundle on openvino or cpu"
            )
        if request.precision not in PRECISIONS:
            raise ProviderUnavailable(
                f"npu contract: precision {request.precision!r} does not run on an NPU (it runs int8, fp16); "
                "export int8/fp16 with `portable-ep export --precisions fp32,int8` and set parameter precision int8"
            )
        variant = select_variant(self.name, request, self.variant_formats, request.precision)
        ov = _import_openvino()
        core = ov.Core()
        devices = visible_devices(core)
        real_npu = "NPU" in devices
        if not real_npu and option_is_true(request.options, "require_device"):
            raise ProviderUnavailable(
                f"no device: OpenVINO sees no NPU (devices: {', '.join(devices) or 'none'}); "
                "install the NPU driver or drop npu.require_device"
            )

        model = core.read_model(str(variant.path))
        static_shapes = request.options.get("static_shapes", "")
        if static_shapes.strip():
            apply_static_shapes(ov, model, parse_static_shapes(static_shapes))
        check_npu_contract(model)

        config: Dict[str, str] = {}
        cache = cache_dir_option(request.options, "cache_dir", "npu")
        if cache is not None:
            config["CACHE_DIR"] = str(cache)
        version = ov.get_version().split("-")[0]
        if real_npu:
            target, device, where = "NPU", "npu", f"NPU ({_full_name(core, 'NPU')})"
        else:
            # The contract above is what emulation checks; the arithmetic is the CPU's, with
            # float parts pinned to f32 (OpenVINO would otherwise pick bf16, see FACTS.md).
            config["INFERENCE_PRECISION_HINT"] = "f32"
            target, device, where = "CPU", EMULATED_DEVICE, f"npu (emulated on CPU: {_full_name(core, 'CPU')}; no NPU device)"
        description = f"OpenVINO {version} on {where}, {request.precision}, {variant.path.name}"
        session = NpuSession(lambda: core.compile_model(model, target, config), request.precision, device, description)
        if cache is not None and _loaded_from_cache(session._model.compiled):
            session.description += f", compiled blob from cache {cache}"
        session.variant = variant
        return session


def _loaded_from_cache(compiled) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:  # noqa: BLE001 - an older plugin without the property: say nothing
        return False


def _full_name(core, device: str) -> str:
    try:
        return str(core.get_property(device, "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001 - the name is for people; the device still works without it
        return device
