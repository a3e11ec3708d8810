"""Turn a Triton model configuration and version folder into a serving session.

Pure Python (no ``triton_python_backend_utils``) so it is unit-tested directly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from portable_ep.backends import (
    ChainResolution,
    LoadRequest,
    ProviderRegistry,
    find_model_artifacts,
    parse_provider_chain,
    resolve_provider_chain,
)
from portable_ep.backends.auto_precision import AUTO, choose_auto_precision
from portable_ep.backends.base import ProviderUnavailable, Session, TensorInfo
from portable_ep.backends.registry import default_registry
from portable_ep.backends.chain import split_provider_options
from portable_ep.backends.dtypes import short_type_name
from portable_ep.backends.integrity import verify_for_load
from portable_ep.python_backend.model_config import ModelConfigError, ServingConfig
from portable_ep.python_backend.route_check import allow_unmeasured, judge_route
from portable_ep.python_backend.request_limits import LimitConfigError, RequestLimits, build_limits, limits_from_onnx

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", AUTO)


def _by_name(tensors: Sequence[TensorInfo]) -> Dict[str, TensorInfo]:
    """Each tensor under every name the runtime knows it by (an OpenVINO port has several)."""
    return {name: tensor for tensor in tensors for name in tensor.names}


def signature_mismatches(config: ServingConfig, session: Session) -> List[str]:
    """Differences between config.pbtxt and the model the provider loaded, one line each.

    A tensor matches a config entry by any of its names; a scalar (rank 0) matches dims
    [1] (Triton has no rank 0 for a model that does not batch, and a batched model's
    per-sample scalar output is sent as the model's [batch], see triton_config.py).
    """
    problems = []
    model_inputs, model_outputs = _by_name(session.inputs), _by_name(session.outputs)
    for kind, specs, tensors, listed in (("input", config.inputs, model_inputs, session.inputs),
                                         ("output", config.outputs, model_outputs, session.outputs)):
        for spec in specs:
            tensor = tensors.get(spec.name)
            if tensor is None:
                names = ", ".join(t.name for t in listed) or "none"
                problems.append(f"{kind} {spec.name!r} is not in the model (the model has {names})")
                continue
            if tensor.dtype != spec.dtype:
                problems.append(f"{kind} {spec.name!r} is {short_type_name(spec.dtype)} in config.pbtxt but "
                                f"{_type_text(tensor.dtype)} in the model")
            model_dims = list(tensor.shape[1:] if config.batched else tensor.shape)
            if not model_dims and tuple(spec.dims) == (1,) and (kind == "output" or not config.batched):
                continue
            if len(model_dims) != len(spec.dims):
                problems.append(
                    f"{kind} {spec.name!r} has {len(spec.dims)} dims in config.pbtxt "
                    f"({'without' if config.batched else 'with'} the batch dim) but the model has {len(model_dims)}"
                )
                continue
            for position, (want, have) in enumerate(zip(spec.dims, model_dims)):
                if want >= 0 and isinstance(have, int) and have != want:
                    problems.append(f"{kind} {spec.name!r} dim {position} is {want} in config.pbtxt but {have} in the model")
    configured = {spec.name for spec in config.inputs}
    for tensor in session.inputs:
        if not configured.intersection(tensor.names):
            problems.append(f"model input {tensor.name!r} is missing from config.pbtxt")
    return problems


def _type_text(dtype) -> str:
    try:
        return short_type_name(dtype)
    except ValueError:  # a type Triton cannot carry (float8, int4, ...)
        return f"{np.dtype(dtype).name} (which Triton cannot carry)"


def adopt_config_names(config: ServingConfig, session: Session) -> None:
    """Name the session's tensors as config.pbtxt does (one of their aliases), so feeds, outputs and logs agree."""
    for attribute, specs in (("inputs", config.inputs), ("outputs", config.outputs)):
        wanted = {spec.name for spec in specs}
        renamed = []
        for tensor in getattr(session, attribute):
            name = next((n for n in tensor.names if n in wanted), tensor.name)
            renamed.append(tensor if name == tensor.name else
                           replace(tensor, name=name, aliases=tuple(n for n in tensor.names if n != name)))
        setattr(session, attribute, renamed)


def check_signature(config: ServingConfig, provider: str, session: Session) -> None:
    """Inside the provider chain: a session whose I/O does not match config.pbtxt is this provider's refusal.

    The chain then tries the next provider (OpenVINO may drop a zero-size input or read a
    type differently from ONNX Runtime); with none left, the load fails listing each reason.
    """
    problems = signature_mismatches(config, session)
    if problems:
        raise ProviderUnavailable(f"config.pbtxt does not match the model as {provider} reads it: " + "; ".join(problems))
    adopt_config_names(config, session)


@dataclass
class LoadedModel:
    resolution: ChainResolution
    #: The precision served (for ``auto``, the one chosen).
    precision: str
    chain: List[str]
    #: For ``precision: auto``, the line saying what was chosen and why.
    auto_reason: str = ""
    limits: RequestLimits = RequestLimits()
    #: Input shapes with their symbolic dim names (OpenVINO loses the names: the manifest keeps them).
    input_shapes: Optional[dict] = None
    output_shapes: Optional[dict] = None


def _plain_onnx_limits(artifacts, shapes) -> dict:
    """A hand-placed model.onnx has no manifest: read vocabularies and position table from the graph."""
    if artifacts.onnx is None:
        return {}
    try:
        import onnx
    except ImportError:  # the serving images need not carry onnx; the limits are then config.pbtxt's alone
        return {}
    model = onnx.load(str(artifacts.onnx), load_external_data=False)
    ints = [t.name for t in model.graph.input
            if onnx.helper.tensor_dtype_to_np_dtype(t.type.tensor_type.elem_type).kind in "iu"]
    return limits_from_onnx(model, shapes, ints)


def symbolic_input_shapes(artifacts, session: Session, kind: str = "inputs") -> dict:
    """Input (or output) shapes with symbolic names: the manifest's signature, else what the runtime reports."""
    signature = (artifacts.manifest or {}).get("signature") or {}
    if signature.get(kind):
        return {entry["name"]: tuple(entry["shape"]) for entry in signature[kind]}
    return {t.name: tuple(t.shape) for t in getattr(session, kind)}


def request_limits(config: ServingConfig, artifacts, shapes: dict) -> RequestLimits:
    if artifacts.manifest is not None:
        model_limits = artifacts.manifest.get("limits") or {}
    else:
        model_limits = _plain_onnx_limits(artifacts, shapes)
    try:
        return build_limits(config.parameters, shapes, model_limits)
    except LimitConfigError as exc:
        raise ModelConfigError(f"model {config.name!r}: {exc}") from None


@dataclass
class ResolvedSession:
    """The provider session the chain chose for a model, before any task-specific checks."""

    resolution: ChainResolution
    artifacts: object
    precision: str  # served precision (for ``auto``, the one chosen)
    chain: List[str]
    auto_reason: str = ""


def resolve_session(
    config: ServingConfig,
    version_dir: Path,
    device_id: int = 0,
    registry: Optional[ProviderRegistry] = None,
    precisions: tuple = PRECISIONS,
    match_config: bool = True,
) -> ResolvedSession:
    """Verify the bundle's files and load it on the first provider of the chain that can serve it.

    With ``match_config``, a provider whose session does not match config.pbtxt's I/O is
    skipped with the differences as its reason (see :func:`check_signature`).
    """
    chain = parse_provider_chain(config.parameters.get("providers"))
    precision = (config.parameters.get("precision") or "fp32").lower()
    if precision not in precisions:
        raise ModelConfigError(f"parameter precision={precision!r}; use one of {', '.join(precisions)}")
    artifacts = find_model_artifacts(version_dir)
    if artifacts.manifest is not None:
        verify_for_load(artifacts.root, artifacts.manifest)
    options = split_provider_options(config.parameters)
    registry = registry or default_registry()
    auto_reasons = {}

    def make_request(name: str) -> LoadRequest:
        chosen = precision
        if precision == AUTO:  # decided per provider: each has its own fastest precision
            choice = choose_auto_precision(registry.get(name), artifacts, options.get(name, {}))
            chosen, auto_reasons[name] = choice.precision, choice.reason
        return LoadRequest(artifacts=artifacts, precision=chosen, options=options.get(name, {}), device_id=device_id,
                           instances=config.instances, allow_unmeasured=unmeasured_ok)

    unmeasured_ok = allow_unmeasured(config.parameters)

    def accept(name: str, session: Session):
        if match_config:
            check_signature(config, name, session)
        return judge_route(name, session, artifacts, unmeasured_ok)

    resolution = resolve_provider_chain(chain, make_request, registry, accept=accept)
    served = resolution.session.precision if precision == AUTO else precision
    return ResolvedSession(resolution, artifacts, served, chain, auto_reasons.get(resolution.provider, ""))


def load_model(
    config: ServingConfig,
    version_dir: Path,
    device_id: int = 0,
    registry: Optional[ProviderRegistry] = None,
) -> LoadedModel:
    resolved = resolve_session(config, version_dir, device_id, registry)
    resolution, artifacts = resolved.resolution, resolved.artifacts
    shapes = symbolic_input_shapes(artifacts, resolution.session)
    try:
        limits = request_limits(config, artifacts, shapes)
    except Exception:
        resolution.session.close()
        raise
    return LoadedModel(resolution=resolution, precision=resolved.precision, chain=resolved.chain,
                       auto_reason=resolved.auto_reason, limits=limits, input_shapes=shapes,
                       output_shapes=symbolic_input_shapes(artifacts, resolution.session, "outputs"))
