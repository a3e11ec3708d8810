"""Shared ONNX Runtime session handling for the cpu and GPU providers."""
from __future__ import annotations

from typing import List, Mapping, Sequence

import numpy as np

from portable_ep.backends.base import LoadRequest, ProviderUnavailable, Session, TensorInfo, option_as_int
from portable_ep.backends.dtypes import is_bfloat16, ort_type_to_numpy


def import_onnxruntime(provider: str, install_hint: str):
    try:
        import onnxruntime
    except ImportError:
        raise ProviderUnavailable(f"package missing: onnxruntime is not installed; {install_hint}") from None
    return onnxruntime


def _tensor_infos(nodes) -> List[TensorInfo]:
    infos = []
    for node in nodes:
        try:
            dtype = ort_type_to_numpy(node.type)
        except ValueError as exc:  # bfloat16 without ml_dtypes
            raise ProviderUnavailable(f"model tensor {node.name!r}: {exc}") from None
        if dtype is None:
            raise ProviderUnavailable(f"model tensor {node.name!r} has type {node.type}, which Triton cannot carry")
        infos.append(TensorInfo(node.name, dtype, tuple(node.shape)))
    return infos


SESSION_OPTION_KEYS = ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level", "allow_spinning", "log_severity_level")


def default_spinning(request: LoadRequest) -> str:
    """Intra-op spinning: on ("1", ORT's own default) for a model served by one instance, off for several.

    Without spinning, every parallel section wakes the pool's sleeping threads; served on 2
    cores that cost 25 % throughput at concurrency 16 and ~1.5 ms at concurrency 1 on a
    4-layer BERT (docs/performance.md). With several instances, each instance's spinning
    threads would take cores the others are computing on, so it stays off there.
    """
    return "1" if request.instances <= 1 else "0"


def session_options(ort, request: LoadRequest, provider: str, provider_keys: Sequence[str] = ()):
    """ORT SessionOptions from the ``<provider>.<key>`` parameters; unknown keys are refused by name."""
    unknown = sorted(set(request.options) - set(SESSION_OPTION_KEYS) - set(provider_keys))
    if unknown:
        raise ProviderUnavailable(
            f"unknown option(s) {', '.join(provider + '.' + k for k in unknown)}; known: "
            + ", ".join(provider + "." + k for k in (*SESSION_OPTION_KEYS, *provider_keys))
        )
    opts = ort.SessionOptions()
    for key, attr in (("intra_op_num_threads", "intra_op_num_threads"), ("inter_op_num_threads", "inter_op_num_threads")):
        value = option_as_int(request.options, key, provider)
        if value is not None:
            setattr(opts, attr, value)
    level = request.options.get("graph_optimization_level")
    if level:
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if level not in levels:
            raise ProviderUnavailable(f"option {provider}.graph_optimization_level={level!r}; use one of {', '.join(levels)}")
        opts.graph_optimization_level = levels[level]
    # A failing request is answered with its own error; ORT's duplicate error log
    # lines (with terminal colour codes) would only clutter the server log.
    severity = option_as_int(request.options, "log_severity_level", provider)
    opts.log_severity_level = 4 if severity is None else severity
    opts.add_session_config_entry("session.intra_op.allow_spinning", request.options.get("allow_spinning", default_spinning(request)))
    return opts


def strings_as_text(name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES tensor as ONNX Runtime's string tensors take it: Python ``str`` elements.

    Triton hands string tensors over as ``bytes``; ONNX Runtime converts any element that
    is not a ``str`` with ``str()``, so ``b'abc'`` would reach the model as the five
    characters ``b'abc'`` and the model would answer wrongly without an error. Elements
    are decoded as UTF-8 (ONNX strings are UTF-8); bytes that are not UTF-8 are refused.
    """
    if array.dtype != np.object_ or not any(isinstance(v, (bytes, bytearray)) for v in array.flat):
        return array
    text = np.empty(array.shape, dtype=object)
    for index, value in np.ndenumerate(array):
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"input {name!r} element {list(index)} is not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start}); ONNX string tensors hold UTF-8") from None
        text[index] = value
    return text


#: onnx.TensorProto.BFLOAT16 (the serving images need not carry the onnx package).
ONNX_BFLOAT16 = 16


def _bfloat16_value(ort, array: np.ndarray):
    """A bfloat16 array as the OrtValue ONNX Runtime takes (its numpy bridge has no bfloat16: 'Numpy_type 256')."""
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array).view(np.uint16), ONNX_BFLOAT16)


def _bfloat16_array(value) -> np.ndarray:
    """A bfloat16 OrtValue copied out as an ``ml_dtypes.bfloat16`` array (``OrtValue.numpy()`` refuses bfloat16)."""
    import ctypes

    from portable_ep.backends.dtypes import bfloat16

    shape = tuple(value.shape())
    count = int(np.prod(shape, dtype=np.int64))
    raw = ctypes.string_at(value.data_ptr(), 2 * count) if count else b""
    return np.frombuffer(raw, dtype=np.uint16).reshape(shape).view(bfloat16()).copy()


class OnnxRuntimeSession(Session):
    def __init__(self, ort, path, providers: Sequence, options, provider_name: str, precision: str, device: str):
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        self.provider = provider_name
        self.precision = precision
        self.device = device
        self.inputs = _tensor_infos(self._session.get_inputs())
        self.outputs = _tensor_infos(self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self._string_inputs = {t.name for t in self.inputs if t.dtype == np.dtype(np.object_)}
        # bfloat16 I/O goes through OrtValues: ONNX Runtime's numpy bridge knows no bfloat16. run()
        # takes OrtValue feeds beside arrays, but only run_with_ort_values returns bfloat16, and
        # that one takes no string inputs (OrtValues are never made from string arrays).
        self._bfloat16_inputs = {t.name for t in self.inputs if is_bfloat16(t.dtype)}
        self._bfloat16_outputs = any(is_bfloat16(t.dtype) for t in self.outputs)
        if self._bfloat16_outputs and self._string_inputs:
            raise ProviderUnavailable("ONNX Runtime's Python API returns bfloat16 outputs only from calls without "
                                      "string inputs, and this model has both; serve it with another provider")
        self._ort = ort
        self.active_providers = tuple(self._session.get_providers())
        self.description = f"ONNX Runtime {ort.__version__} {self.active_providers[0]} on {device}, {precision}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict:
        feeds = dict(feeds)
        for name in self._string_inputs & feeds.keys():
            feeds[name] = strings_as_text(name, feeds[name])
        for name in self._bfloat16_inputs & feeds.keys():
            feeds[name] = _bfloat16_value(self._ort, feeds[name])
        if self._bfloat16_outputs:
            return self._run_with_values(feeds)
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results))

    def _run_with_values(self, feeds: Mapping[str, object]) -> dict:
        values = {name: value if isinstance(value, self._ort.OrtValue) else self._ort.OrtValue.ortvalue_from_numpy(value)
                  for name, value in feeds.items()}
        results = self._session.run_with_ort_values(self._output_names, values)
        return {name: (_bfloat16_array(value) if value.data_type() == "tensor(bfloat16)" else value.numpy())
                for name, value in zip(self._output_names, results)}

    def close(self) -> None:
        self._session = None
