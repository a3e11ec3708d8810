"""BF16 tensors across Triton's python backend, which has no numpy form for them.

Triton's python stub refuses ``as_numpy()`` on a BF16 tensor ("Use to_dlpack() and
from_dlpack() instead") and cannot build a BF16 output from a numpy array; its
documented route is DLPack, usually through torch. The serving images need not carry
torch, so this module reads and writes the DLPack structs directly (DLPack's ABI is a
stable C header: ``DLManagedTensor`` holding a ``DLTensor``) and hands the backend
``ml_dtypes.bfloat16`` arrays, the dtype tritonclient uses for BF16.

Reading copies the data out (the capsule's own destructor then returns the tensor to
Triton). Writing lends Triton a view of a uint16 copy of the array, kept alive here
until Triton calls the deleter (or the capsule is dropped unused).
"""
from __future__ import annotations

import ctypes
from typing import Dict, Tuple

import numpy as np

from portable_ep.backends.dtypes import bfloat16

KDL_CPU = 1
KDL_CUDA_HOST = 3
KDL_BFLOAT = 4
CAPSULE_NAME = b"dltensor"


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]
CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

# Indexing (not attribute access, which caches one object per name) gives each use its own signature.
_get_pointer = ctypes.pythonapi["PyCapsule_GetPointer"]
_get_pointer.restype, _get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_raw_get_pointer = ctypes.pythonapi["PyCapsule_GetPointer"]  # from the capsule destructor: a bare pointer
_raw_get_pointer.restype, _raw_get_pointer.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]
_raw_is_valid = ctypes.pythonapi["PyCapsule_IsValid"]
_raw_is_valid.restype, _raw_is_valid.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
_new_capsule = ctypes.pythonapi["PyCapsule_New"]
_new_capsule.restype, _new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, CAPSULE_DESTRUCTOR]

#: Arrays lent to Triton, by the address of their DLManagedTensor, until it calls the deleter.
_LENT: Dict[int, Tuple] = {}


def bfloat16_from_dlpack(capsule) -> np.ndarray:
    """Copy a CPU bfloat16 DLPack tensor (``Tensor.to_dlpack()``) into an ``ml_dtypes.bfloat16`` array."""
    managed = DLManagedTensor.from_address(_get_pointer(capsule, CAPSULE_NAME))
    tensor = managed.dl_tensor
    if (tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes) != (KDL_BFLOAT, 16, 1):
        raise ValueError(f"DLPack tensor has type code {tensor.dtype.code} with {tensor.dtype.bits} bits, not bfloat16")
    if tensor.device.device_type not in (KDL_CPU, KDL_CUDA_HOST):
        raise ValueError(f"DLPack tensor is on device type {tensor.device.device_type}, not in CPU memory")
    shape = tuple(int(tensor.shape[i]) for i in range(tensor.ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.strides and count:
        expected = np.cumprod((1,) + shape[:0:-1])[::-1]
        if any(shape[i] != 1 and tensor.strides[i] != expected[i] for i in range(tensor.ndim)):
            raise ValueError("DLPack tensor is not contiguous in C order")
    raw = ctypes.string_at(tensor.data + tensor.byte_offset, 2 * count) if count else b""
    return np.frombuffer(raw, dtype=np.uint16).reshape(shape).view(bfloat16()).copy()


@DELETER
def _release(managed) -> None:
    _LENT.pop(ctypes.addressof(managed.contents), None)


@CAPSULE_DESTRUCTOR
def _release_unused(capsule) -> None:
    # Called when the capsule itself goes away: a consumer renames it ("used_dlpack") and
    # calls the deleter later; a capsule still named "dltensor" was never consumed.
    if _raw_is_valid(ctypes.c_void_p(capsule), CAPSULE_NAME):
        _LENT.pop(_raw_get_pointer(ctypes.c_void_p(capsule), CAPSULE_NAME), None)


def bfloat16_to_dlpack(array: np.ndarray):
    """A DLPack capsule lending a copy of a bfloat16 array (for ``pb_utils.Tensor.from_dlpack``)."""
    bits = np.array(array, copy=True, order="C").view(np.uint16)
    shape = (ctypes.c_int64 * max(bits.ndim, 1))(*bits.shape)
    managed = DLManagedTensor()
    tensor = managed.dl_tensor
    tensor.data = bits.ctypes.data
    tensor.device = DLDevice(KDL_CPU, 0)
    tensor.ndim = bits.ndim
    tensor.dtype = DLDataType(KDL_BFLOAT, 16, 1)
    tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    tensor.strides = None
    tensor.byte_offset = 0
    managed.deleter = _release
    address = ctypes.addressof(managed)
    _LENT[address] = (bits, shape, managed)
    return _new_capsule(address, CAPSULE_NAME, _release_unused)


def lent_count() -> int:
    """Arrays currently lent out (for tests: every lent array is released)."""
    return len(_LENT)
