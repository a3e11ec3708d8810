"""A model's inputs and outputs as the manifest records them.

Shapes hold ints for fixed dims and strings for symbolic ones (``"batch"``,
``"sequence"``); the first dim is the batch dim when it is symbolic and the model
really batches along it (``Signature.batchable``, measured at export).

Real ONNX files spell "any size" many ways: a named dim, ``?``, an empty name, an
expression (``floor(height/2)``), or a dim_value of -1 or 0 (Paddle). All of them
are symbolic here; the unnamed ones get a name of their own per input and axis, so
two ``?`` dims are never taken for the same size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from portable_ep.exporters.errors import ExportError

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
        from portable_ep.backends.dtypes import dtype_named

        return cls(entry["name"], dtype_named(entry["dtype"]), tuple(entry["shape"]))


@dataclass(frozen=True)
class Signature:
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    #: None: judged from the shapes alone; False when export found that stacking samples
    #: along axis 0 fails or changes the answers (a state batched on axis 1, a graph that
    #: reshapes to a fixed batch of 1).
    batchable: Optional[bool] = None

    @property
    def batched(self) -> bool:
        """Batched when every input and output starts with a symbolic dim (and export did not find otherwise)."""
        if self.batchable is False:
            return False
        return bool(self.inputs) and all(spec.shape and isinstance(spec.shape[0], str) for spec in self.inputs + self.outputs)

    def unbatched(self) -> "Signature":
        return Signature(self.inputs, self.outputs, batchable=False)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def as_dict(self) -> dict:
        return {"inputs": [s.as_dict() for s in self.inputs], "outputs": [s.as_dict() for s in self.outputs],
                "batched": self.batched}

    @classmethod
    def from_dict(cls, entry: dict) -> "Signature":
        batched = entry.get("batched")
        return cls(
            tuple(TensorSpec.from_dict(e) for e in entry["inputs"]),
            tuple(TensorSpec.from_dict(e) for e in entry["outputs"]),
            batchable=False if batched is False else None,  # only "cannot batch" overrides the shapes
        )

    def triton_dims(self, spec: TensorSpec) -> Tuple[int, ...]:
        """Dims for config.pbtxt: the batch dim dropped when batched, symbolic dims as -1."""
        dims = spec.shape[1:] if self.batched else spec.shape
        return tuple(d if isinstance(d, int) else -1 for d in dims)


UNNAMED_DIMS = ("", "?", "-1", "None")


def _not_a_tensor(value, role: str, kind: str) -> str:
    what = {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "an optional",
            "sparse_tensor_type": "a sparse tensor"}.get(kind, f"a {kind}")
    hint = "change the graph to take and give dense tensors"
    element = value.type.sequence_type.elem_type if kind == "sequence_type" else None
    if element is not None and element.WhichOneof("value") == "map_type":
        # skl2onnx classifiers end in ZipMap (a list of {label: probability}) unless told not to.
        hint = "a ZipMap output: convert the model with skl2onnx's options={'zipmap': False} to get the probabilities as a tensor"
    return f"{role} {value.name!r} is {what}, which Triton cannot carry (only tensors travel in requests and responses); {hint}"


def signature_from_onnx(model) -> Signature:
    """Read the graph's I/O (initializers listed as inputs by old exporters are skipped)."""
    from onnx import helper

    initializers = {init.name for init in model.graph.initializer}

    def specs(values) -> Tuple[TensorSpec, ...]:
        result: List[TensorSpec] = []
        for value in values:
            if value.name in initializers:
                continue
            kind = value.type.WhichOneof("value")
            if kind != "tensor_type":
                raise ExportError(_not_a_tensor(value, "input" if values is model.graph.input else "output", kind))
            tensor_type = value.type.tensor_type
            shape: List[Dim] = []
            for index, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    shape.append(int(dim.dim_value))
                elif dim.HasField("dim_param") and dim.dim_param.strip() not in UNNAMED_DIMS:
                    shape.append(dim.dim_param)
                else:  # -1 / 0 (Paddle), "?", "" or no value at all: any size, its own name
                    shape.append(f"{value.name}_dim{index}")
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
            result.append(TensorSpec(value.name, dtype, tuple(shape)))
        return tuple(result)

    return Signature(specs(model.graph.input), specs(model.graph.output))


def symbolic_sizes(signature: Signature, batch: int, overrides: Dict[str, int]) -> Dict[str, int]:
    """Concrete sizes for every symbolic dim: the batch dim gets ``batch``, others ``overrides``
    (by dim name, else ``"*"``)."""
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


#: Ops whose output lists rows ranked by a score, and ops that carry rows through unchanged in
#: order (a gather of the ranked indices, a cast, a reshape), walked back from each graph output.
RANKING_OPS = ("TopK", "NonMaxSuppression")
ROW_PRESERVING_OPS = ("Gather", "GatherElements", "GatherND", "Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape",
                      "Concat", "Slice", "Mul", "Add", "Sub", "Div", "Sigmoid", "Flatten")


def sorted_set_outputs(model, depth: int = 8) -> List[str]:
    """Graph outputs whose rows come out of TopK or NonMaxSuppression (within ``depth`` row-preserving ops).

    Their order is the order of a score, and two runtimes may rank near-tied scores either
    way; the verdict compares them as sets of rows (exporters/accuracy.py).
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    return [output.name for output in model.graph.output if _ranked(output.name, producers, depth)]


def _ranked(name: str, producers, depth: int) -> bool:
    frontier = [name]
    for _ in range(depth):
        nodes = [producers[n] for n in frontier if n in producers]
        if any(node.op_type in RANKING_OPS for node in nodes):
            return True
        frontier = [i for node in nodes if node.op_type in ROW_PRESERVING_OPS for i in node.input if i]
        if not frontier:
            return False
    return False
