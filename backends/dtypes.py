"""Element-type names of ONNX Runtime, OpenVINO and Triton mapped to numpy."""
from __future__ import annotations

import numpy as np

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


def triton_type_to_numpy(type_name: str) -> np.dtype:
    name = type_name if type_name.startswith("TYPE_") else f"TYPE_{type_name}"
    try:
        return TRITON_TYPE_TO_NUMPY[name]
    except KeyError:
        raise ValueError(f"data type {type_name!r} is not supported by portable-ep") from None


def numpy_to_triton_type(dtype) -> str:
    try:
        return NUMPY_TO_TRITON_TYPE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"numpy dtype {np.dtype(dtype)} has no Triton data type") from None


def short_type_name(dtype) -> str:
    """FP32, INT64, ... as Triton's clients spell them."""
    return numpy_to_triton_type(dtype)[len("TYPE_"):]
