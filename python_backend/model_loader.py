"""Turn a Triton model configuration and version folder into a serving session.

Pure Python (no ``triton_python_backend_utils``) so it is unit-tested directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from portable_ep.backends import (
    ChainResolution,
    LoadRequest,
    ProviderRegistry,
    find_model_artifacts,
    parse_provider_chain,
    resolve_provider_chain,
)
from portable_ep.backends.auto_precision import AUTO, choose_auto_precision
from portable_ep.backends.base import Session
from portable_ep.backends.registry import default_registry
from portable_ep.backends.chain import split_provider_options
from portable_ep.backends.dtypes import short_type_name
from portable_ep.backends.integrity import verify_for_load
from portable_ep.python_backend.model_config import ModelConfigError, ServingConfig
from portable_ep.python_backend.route_check import allow_unmeasured, judge_route
from portable_ep.python_backend.request_limits import LimitConfigError, RequestLimits, build_limits, limits_from_onnx

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", AUTO)


def signature_mismatches(config: ServingConfig, session: Session) -> List[str]:
    """Differences between config.pbtxt and the model the provider loaded, one line each."""
    problems = []
    model_inputs = {t.name: t for t in session.inputs}
    model_outputs = {t.name: t for t in session.outputs}
    for kind, specs, tensors in (("input", config.inputs, model_inputs), ("output", config.outputs, model_outputs)):
        for spec in specs:
            tensor = tensors.get(spec.name)
            if tensor is None:
                problems.append(f"{kind} {spec.name!r} is not in the model (the model has {', '.join(tensors) or 'none'})")
                continue
            if tensor.dtype != spec.dtype:
                problems.append(
                    f"{kind} {spec.name!r} is {short_type_name(spec.dtype)} in config.pbtxt but {short_type_name(tensor.dtype)} in the model"
                )
            model_dims = list(tensor.shape[1:] if config.batched else tensor.shape)
            if not model_dims and tuple(spec.dims) == (1,) and (kind == "output" or not config.batched):
                # A scalar declared dims [1]: Triton has no rank 0 for models that do not batch, and a
                # batched model's per-sample scalar output is sent as the model's [batch] (triton_config.py).
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
    for name in model_inputs:
        if name not in configured:
            problems.append(f"model input {name!r} is missing from config.pbtxt")
    return problems


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
) -> ResolvedSession:
    """Verify the bundle's files and load it on the first provider of the chain that can serve it."""
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
    resolution = resolve_provider_chain(chain, make_request, registry,
                                        accept=lambda name, session: judge_route(name, session, artifacts, unmeasured_ok))
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
    problems = signature_mismatches(config, resolution.session)
    if problems:
        resolution.session.close()
        raise ModelConfigError(f"config.pbtxt of model {config.name!r} does not match {artifacts.describe()}: " + "; ".join(problems))
    shapes = symbolic_input_shapes(artifacts, resolution.session)
    try:
        limits = request_limits(config, artifacts, shapes)
    except Exception:
        resolution.session.close()
        raise
    return LoadedModel(resolution=resolution, precision=resolved.precision, chain=resolved.chain,
                       auto_reason=resolved.auto_reason, limits=limits, input_shapes=shapes,
                       output_shapes=symbolic_input_shapes(artifacts, resolution.session, "outputs"))
