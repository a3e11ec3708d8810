"""A model's inputs and outputs as the manifest records them.

Shapes hold ints for fixed dims and strings for symbolic ones (``"batch"``,
``"sequence"``); the first dim is the batch dim when it is symbolic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

Dim = Union[int, str]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: Tuple[Dim, ...]

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": np.dtype(self.dtype).name, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, entry: dict) -> "TensorSpec":
        return cls(entry["name"], np.dtype(entry["dtype"]), tuple(entry["shape"]))


@dataclass(frozen=True)
class Signature:
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    @property
    def batched(self) -> bool:
        """Batched when every input and output starts with a symbolic dim."""
        return all(spec.shape and isinstance(spec.shape[0], str) for spec in self.inputs + self.outputs)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def as_dict(self) -> dict:
        return {"inputs": [s.as_dict() for s in self.inputs], "outputs": [s.as_dict() for s in self.outputs]}

    @classmethod
    def from_dict(cls, entry: dict) -> "Signature":
        return cls(
            tuple(TensorSpec.from_dict(e) for e in entry["inputs"]),
            tuple(TensorSpec.from_dict(e) for e in entry["outputs"]),
        )

    def triton_dims(self, spec: TensorSpec) -> Tuple[int, ...]:
        """Dims for config.pbtxt: the batch dim dropped when batched, symbolic dims as -1."""
        dims = spec.shape[1:] if self.batched else spec.shape
        return tuple(d if isinstance(d, int) else -1 for d in dims)


def signature_from_onnx(model) -> Signature:
    """Read the graph's I/O (initializers listed as inputs by old exporters are skipped)."""
    from onnx import helper

    initializers = {init.name for init in model.graph.initializer}

    def specs(values) -> Tuple[TensorSpec, ...]:
        result: List[TensorSpec] = []
        for value in values:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            shape: List[Dim] = []
            for index, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value"):
                    shape.append(int(dim.dim_value))
                else:
                    shape.append(dim.dim_param or f"{value.name}_dim{index}")
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
            result.append(TensorSpec(value.name, dtype, tuple(shape)))
        return tuple(result)

    return Signature(specs(model.graph.input), specs(model.graph.output))


def symbolic_sizes(signature: Signature, batch: int, overrides: Dict[str, int]) -> Dict[str, int]:
    """Concrete sizes for every symbolic dim: the batch dim gets ``batch``, others ``overrides``."""
    sizes: Dict[str, int] = {}
    for spec in signature.inputs:
        for index, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim not in sizes:
                if index == 0 and signature.batched:
                    sizes[dim] = batch
                elif dim in overrides:
                    sizes[dim] = overrides[dim]
                else:
                    sizes[dim] = overrides.get("*", 16)
    return sizes


def concrete_shape(shape: Sequence[Dim], sizes: Dict[str, int]) -> Tuple[int, ...]:
    return tuple(d if isinstance(d, int) else sizes[d] for d in shape)
