"""Execution providers: the pluggable half of portable-ep.

A provider turns model files into a :class:`Session` on one kind of hardware.
Providers are found through the ``portable_ep.providers`` entry-point group, so a
third-party package can add one without touching this code.
"""
from portable_ep.backends.base import (
    Availability,
    LoadRequest,
    Provider,
    ProviderUnavailable,
    Session,
    TensorInfo,
)
from portable_ep.backends.artifacts import ModelArtifacts, find_model_artifacts
from portable_ep.backends.chain import (
    ChainResolution,
    NoProviderAvailable,
    SkippedProvider,
    parse_provider_chain,
    resolve_provider_chain,
)
from portable_ep.backends.registry import ProviderRegistry, default_registry

__all__ = [
    "Availability",
    "ChainResolution",
    "LoadRequest",
    "ModelArtifacts",
    "NoProviderAvailable",
    "Provider",
    "ProviderRegistry",
    "ProviderUnavailable",
    "Session",
    "SkippedProvider",
    "TensorInfo",
    "default_registry",
    "find_model_artifacts",
    "parse_provider_chain",
    "resolve_provider_chain",
]
