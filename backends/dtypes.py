"""Element-type names of ONNX Runtime, OpenVINO and Triton mapped to numpy.

Triton carries BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BF16 and BYTES
(strings). numpy has no bfloat16 of its own: BF16 tensors are numpy arrays of
``ml_dtypes.bfloat16`` everywhere in portable-ep, the dtype tritonclient itself uses for
BF16 (since r26.06 it refuses float32 arrays for BF16 inputs). ``ml_dtypes`` is a
dependency of the package; :func:`bfloat16` says what to install where it is missing.
Every other element type ONNX knows (float8 variants, int4/uint4, int2, float4, complex)
has no Triton data type: :func:`numpy_to_triton_type` refuses it naming the tensor, so a
model with such I/O is refused when its config.pbtxt is written, never at a runtime.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

BF16 = "TYPE_BF16"


def bfloat16() -> np.dtype:
    """numpy's dtype for BF16 tensors (``ml_dtypes.bfloat16``)."""
    try:
        import ml_dtypes
    except ImportError:
        raise ValueError("BF16 tensors need the ml_dtypes package (numpy has no bfloat16): pip install ml_dtypes") from None
    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype) -> bool:
    """True for ``ml_dtypes.bfloat16`` (checked by name: ml_dtypes need not be importable to ask)."""
    return np.dtype(dtype).name == "bfloat16"


ORT_TYPE_TO_NUMPY = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(np.object_),
}

TRITON_TYPE_TO_NUMPY = {
    "TYPE_BOOL": np.dtype(np.bool_),
    "TYPE_UINT8": np.dtype(np.uint8),
    "TYPE_UINT16": np.dtype(np.uint16),
    "TYPE_UINT32": np.dtype(np.uint32),
    "TYPE_UINT64": np.dtype(np.uint64),
    "TYPE_INT8": np.dtype(np.int8),
    "TYPE_INT16": np.dtype(np.int16),
    "TYPE_INT32": np.dtype(np.int32),
    "TYPE_INT64": np.dtype(np.int64),
    "TYPE_FP16": np.dtype(np.float16),
    "TYPE_FP32": np.dtype(np.float32),
    "TYPE_FP64": np.dtype(np.float64),
    "TYPE_STRING": np.dtype(np.object_),
}

NUMPY_TO_TRITON_TYPE = {v: k for k, v in TRITON_TYPE_TO_NUMPY.items()}

#: What the refusals list as carried.
TRITON_TYPES_TEXT = "BOOL, UINT8/16/32/64, INT8/16/32/64, FP16, FP32, FP64, BF16 and STRING (BYTES)"


def dtype_named(name: str) -> np.dtype:
    """``np.dtype(name)``, also for ml_dtypes' names (``bfloat16``, ``float8_e4m3fn``) a manifest may record."""
    try:
        return np.dtype(name)
    except TypeError:
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError(f"element type {name!r} needs the ml_dtypes package: pip install ml_dtypes") from None
        return np.dtype(getattr(ml_dtypes, name))


def restore_bfloat16(array: np.ndarray) -> np.ndarray:
    """An array read back from .npz/.npy with its bfloat16 dtype: numpy stores ``ml_dtypes.bfloat16``
    as raw 2-byte voids ('V2'), and bfloat16 is the only 2-byte element type without a numpy name."""
    if array.dtype.kind == "V" and array.dtype.itemsize == 2 and array.dtype.names is None:
        return array.view(bfloat16())
    return array


def ort_type_to_numpy(type_name: str) -> Optional[np.dtype]:
    """numpy dtype of an ONNX Runtime type string (``tensor(bfloat16)`` included), None for others."""
    if type_name == "tensor(bfloat16)":
        return bfloat16()
    return ORT_TYPE_TO_NUMPY.get(type_name)


def triton_type_to_numpy(type_name: str) -> np.dtype:
    name = type_name if type_name.startswith("TYPE_") else f"TYPE_{type_name}"
    if name == BF16:
        return bfloat16()
    try:
        return TRITON_TYPE_TO_NUMPY[name]
    except KeyError:
        raise ValueError(f"data type {type_name!r} is not one Triton carries ({TRITON_TYPES_TEXT})") from None


def numpy_to_triton_type(dtype, tensor: str = "") -> str:
    """``TYPE_FP32``, ... for a numpy dtype; ValueError naming ``tensor`` (e.g. "input 'x'") when Triton has no such type."""
    dtype = np.dtype(dtype)
    if is_bfloat16(dtype):
        return BF16
    try:
        return NUMPY_TO_TRITON_TYPE[dtype]
    except KeyError:
        which = f"{tensor} has element type {dtype.name}" if tensor else f"element type {dtype.name}"
        raise ValueError(f"{which}, which Triton cannot carry (it carries {TRITON_TYPES_TEXT}); "
                         "cast it to one of those inside the model") from None


def short_type_name(dtype) -> str:
    """FP32, INT64, STRING, BF16, ... as config.pbtxt spells them (without ``TYPE_``)."""
    return numpy_to_triton_type(dtype)[len("TYPE_"):]


def wire_type_name(dtype) -> str:
    """The datatype a client puts on the wire: as config.pbtxt, except strings travel as BYTES."""
    name = short_type_name(dtype)
    return "BYTES" if name == "STRING" else name
