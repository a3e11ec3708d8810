"""Read what the backend needs from Triton's model configuration (its JSON form)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from portable_ep.backends.dtypes import short_type_name, triton_type_to_numpy


class ModelConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    dims: Tuple[int, ...]  # without the batch dimension; -1 = any size
    optional: bool = False

    def describe(self, batched: bool) -> str:
        dims = (["batch"] if batched else []) + [str(d) if d >= 0 else "-1" for d in self.dims]
        return f"{self.name} ({short_type_name(self.dtype)} [{', '.join(dims)}])"


@dataclass(frozen=True)
class ServingConfig:
    name: str
    max_batch_size: int
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    parameters: Dict[str, str] = field(default_factory=dict)
    #: Instances of the model (all instance groups): they share the machine's cores.
    instances: int = 1

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _tensor_specs(entries: List[dict], kind: str, model: str) -> Tuple[TensorSpec, ...]:
    specs = []
    for entry in entries:
        name = entry.get("name", "")
        try:
            dtype = triton_type_to_numpy(entry.get("data_type", ""))
        except ValueError as exc:
            raise ModelConfigError(f"model {model!r} {kind} {name!r}: {exc}") from None
        dims = tuple(int(d) for d in entry.get("dims", []))
        if "reshape" in entry:
            # Triton hands the backend tensors in the reshaped shape (a scalar is dims [1], reshape []).
            dims = tuple(int(d) for d in (entry.get("reshape") or {}).get("shape", []))
        specs.append(TensorSpec(name, dtype, dims, bool(entry.get("optional", False))))
    return tuple(specs)


def parse_model_config(config: dict) -> ServingConfig:
    name = config.get("name", "")
    parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    inputs = _tensor_specs(config.get("input", []), "input", name)
    outputs = _tensor_specs(config.get("output", []), "output", name)
    if not inputs or not outputs:
        raise ModelConfigError(f"model {name!r}: config.pbtxt must list its inputs and outputs")
    return ServingConfig(
        name=name,
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
        instances=max(1, sum(int(group.get("count", 1) or 1) for group in config.get("instance_group", []) or [{}])),
    )
