"""Write Triton model repositories for the portable_ep backend.

config.pbtxt is built as a ``ModelConfig`` protobuf and printed with text_format,
never from string templates, so anything Triton can parse round-trips.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from portable_ep.backends.dtypes import numpy_to_triton_type

BACKEND_NAME = "portable_ep"


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ImportError("writing config.pbtxt needs tritonclient: pip install 'portable-ep[export]'") from None
    return model_config_pb2


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dtype: np.dtype
    dims: Tuple[int, ...]  # without the batch dimension; -1 = any size
    # Let Triton's dynamic batcher put requests of different shapes in one batch: without it
    # the batcher only batches equal shapes, and the backend never sees mixed lengths to pad.
    ragged: bool = False


def _set_parameters(config, providers: Optional[str], precision: Optional[str],
                    parameters: Optional[Mapping[str, str]]) -> None:
    """The backend's config.pbtxt parameters: the chain, the precision, and any others given."""
    params: Dict[str, str] = dict(parameters or {})
    if providers:
        params["providers"] = providers
    if precision:
        params["precision"] = precision
    for key, value in params.items():
        config.parameters[key].string_value = value


def build_model_config(
    name: str,
    inputs: Sequence[TensorDecl],
    outputs: Sequence[TensorDecl],
    *,
    max_batch_size: int = 8,
    dynamic_batching_delay_us: Optional[int] = 1000,
    instances: int = 1,
    instance_kind: str = "KIND_CPU",
    providers: Optional[str] = None,
    precision: Optional[str] = None,
    parameters: Optional[Mapping[str, str]] = None,
):
    pb2 = _model_config_pb2()
    config = pb2.ModelConfig(name=name, backend=BACKEND_NAME, max_batch_size=max_batch_size)
    for decls, field in ((inputs, config.input), (outputs, config.output)):
        for decl in decls:
            kind = "input" if field is config.input else "output"
            tensor = field.add(name=decl.name, data_type=pb2.DataType.Value(numpy_to_triton_type(decl.dtype, f"{kind} {decl.name!r}")),
                               dims=list(decl.dims) or [1])
            if decl.ragged and field is config.input and max_batch_size > 0:
                tensor.allow_ragged_batch = True
            if not decl.dims and max_batch_size > 0 and field is config.input:
                # Triton needs dims: a batched model's per-sample scalar input travels as [1], reshaped to [].
                # (A model that does not batch may not declare a scalar at all: it gets dims [1] and the
                # backend squeezes it to the model's rank 0.)
                tensor.reshape.SetInParent()
            # A per-sample scalar *output* (a classifier's label [batch]) is declared dims [1] without a
            # reshape: Triton would present a reshaped output as [batch, 1], while without one it sends the
            # shape the backend returns, the model's own [batch] (the golden outputs' shape).
    if max_batch_size > 0 and dynamic_batching_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = dynamic_batching_delay_us
    # KIND_GPU gives each instance a device id the cuda provider honours.
    config.instance_group.add(count=instances, kind=pb2.ModelInstanceGroup.Kind.Value(instance_kind))
    _set_parameters(config, providers, precision, parameters)
    return config


# vLLM's Triton backend I/O (name, type, optional): its clients, genai-perf and Triton's own OpenAI
# frontend (which always sends the return_* inputs) use it as is. Outputs (name, type, dims) as vLLM's
# backend declares them (its docs/additional_outputs.md); each return_* input asks for one output.
GENERATION_INPUTS = (("text_input", "TYPE_STRING", False), ("stream", "TYPE_BOOL", True),
                     ("sampling_parameters", "TYPE_STRING", True), ("exclude_input_in_output", "TYPE_BOOL", True),
                     ("return_finish_reason", "TYPE_BOOL", True), ("return_cumulative_logprob", "TYPE_BOOL", True),
                     ("return_logprobs", "TYPE_BOOL", True), ("return_num_input_tokens", "TYPE_BOOL", True),
                     ("return_num_output_tokens", "TYPE_BOOL", True))
GENERATION_OUTPUT = "text_output"
GENERATION_OUTPUTS = (("text_output", "TYPE_STRING", (-1,)), ("finish_reason", "TYPE_STRING", (-1,)),
                      ("cumulative_logprob", "TYPE_FP32", (-1,)), ("logprobs", "TYPE_STRING", (-1,)),
                      ("num_input_tokens", "TYPE_UINT32", (1,)), ("num_output_tokens", "TYPE_UINT32", (-1,)))


def build_generation_config(
    name: str,
    *,
    instance_kind: str = "KIND_CPU",
    providers: Optional[str] = None,
    precision: Optional[str] = None,
    parameters: Optional[Mapping[str, str]] = None,
):
    """config.pbtxt of a generative bundle: decoupled (streamed responses), one instance, no Triton batching.

    Batching happens inside the backend between decode steps (continuous batching), so
    Triton hands requests over at once (max_batch_size 0) and one instance owns the model.
    """
    pb2 = _model_config_pb2()
    config = pb2.ModelConfig(name=name, backend=BACKEND_NAME, max_batch_size=0)
    config.model_transaction_policy.decoupled = True
    for input_name, data_type, optional in GENERATION_INPUTS:
        config.input.add(name=input_name, data_type=pb2.DataType.Value(data_type), dims=[1], optional=optional)
    for output_name, data_type, dims in GENERATION_OUTPUTS:
        config.output.add(name=output_name, data_type=pb2.DataType.Value(data_type), dims=list(dims))
    config.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.Kind.Value(instance_kind))
    _set_parameters(config, providers, precision, parameters)
    return config


def config_to_pbtxt(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_pbtxt(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config_pb2().ModelConfig())


def write_model(repository, config, files: Mapping[str, Path], version: int = 1) -> Path:
    """Create ``repository/<name>/config.pbtxt`` and copy ``files`` into ``<version>/``."""
    model_dir = Path(repository) / config.name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    for dest_name, source in files.items():
        shutil.copy2(source, version_dir / dest_name)
    (model_dir / "config.pbtxt").write_text(config_to_pbtxt(config))
    return model_dir
