"""Resolve an ordered provider chain: the first provider that can serve the model wins.

Every provider skipped on the way is kept with its one-line reason, so the backend
can log why (package missing, no device, no usable model variant) and a chain with
nothing usable fails with the full list.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, List, Mapping, Optional, Sequence

from portable_ep.backends.base import LoadRequest, ProviderUnavailable, Session
from portable_ep.backends.registry import ProviderRegistry, default_registry

DEFAULT_CHAIN = ("openvino", "cpu")
# An image (or an operator) sets the chain for models whose config.pbtxt names none,
# so the same model repository serves unchanged on every hardware target.
DEFAULT_CHAIN_ENV = "PORTABLE_EP_PROVIDERS"


@dataclass(frozen=True)
class SkippedProvider:
    name: str
    reason: str


@dataclass
class ChainResolution:
    provider: str
    session: Session
    skipped: List[SkippedProvider] = field(default_factory=list)
    #: What the chain's ``accept`` said of the chosen session (e.g. how its route was measured).
    note: object = None


class NoProviderAvailable(RuntimeError):
    def __init__(self, skipped: Sequence[SkippedProvider]):
        self.skipped = list(skipped)
        lines = "; ".join(f"{s.name}: {s.reason}" for s in self.skipped)
        super().__init__(f"no provider in the chain can serve this model -- {lines}")


def default_provider_chain() -> List[str]:
    """$PORTABLE_EP_PROVIDERS when set, else ``openvino,cpu``."""
    text = os.environ.get(DEFAULT_CHAIN_ENV, "")
    return parse_provider_chain(text) if text.strip() else list(DEFAULT_CHAIN)


def parse_provider_chain(text: Optional[str]) -> List[str]:
    """``"cuda, openvino ,cpu"`` → ``["cuda", "openvino", "cpu"]``; empty means the default chain."""
    if text is None or not text.strip():
        return default_provider_chain()
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"provider chain {text!r} names {', '.join(duplicates)} more than once")
    return names


def resolve_provider_chain(
    chain: Sequence[str],
    make_request: Callable[[str], LoadRequest],
    registry: Optional[ProviderRegistry] = None,
    accept: Optional[Callable[[str, Session], object]] = None,
) -> ChainResolution:
    """Probe and load each provider in order; return the first session that loads.

    ``make_request(name)`` builds the provider's LoadRequest (its own options differ).
    ``accept(name, session)``, when given, judges a loaded session before it is chosen:
    it returns a note for the log (kept as ``ChainResolution.note``) or raises
    :class:`ProviderUnavailable`, and the chain closes the session and goes on.
    """
    registry = registry or default_registry()
    skipped: List[SkippedProvider] = []
    for name in chain:
        try:
            provider = registry.get(name)
            availability = provider.probe()
            if not availability.ok:
                raise ProviderUnavailable(availability.reason)
            session = provider.load(make_request(name))
            note = None
            if accept is not None:
                try:
                    note = accept(name, session)
                except BaseException:
                    session.close()
                    raise
        except ProviderUnavailable as exc:
            skipped.append(SkippedProvider(name, str(exc)))
            continue
        except Exception as exc:  # a runtime that rejects the model must not end the chain
            # The cause, not OpenVINO's first line ("Exception from src/inference/src/cpp/core.cpp:84:").
            # The runtime-error wording lives with the exporters (imported here only on this path).
            from portable_ep.exporters.errors import runtime_cause

            skipped.append(SkippedProvider(name, f"failed to load the model: {type(exc).__name__}: {runtime_cause(exc)}"))
            continue
        return ChainResolution(provider=name, session=session, skipped=skipped, note=note)
    raise NoProviderAvailable(skipped)


def split_provider_options(parameters: Mapping[str, str]) -> dict:
    """``{"openvino.num_streams": "2", "cpu.intra_op_num_threads": "1"}`` → per-provider dicts."""
    options: dict = {}
    for key, value in parameters.items():
        provider, dot, option = key.partition(".")
        if dot and option:
            options.setdefault(provider.lower(), {})[option] = value
    return options
