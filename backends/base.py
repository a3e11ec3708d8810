"""The provider contract every execution provider implements.

Kept deliberately small: ``probe()`` says whether the provider can run here and why
not, ``load()`` turns model files into a :class:`Session`, and a session runs
``{name: ndarray}`` feeds.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from portable_ep.backends.artifacts import ModelArtifacts, Variant
from portable_ep.backends.routes import ALLOW_UNMEASURED, OUT_OF_BUDGET, route_verdict

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown


class ProviderUnavailable(RuntimeError):
    """This provider cannot serve this model here; the message is one line naming the fix."""


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""
    devices: Tuple[str, ...] = ()
    capabilities: Tuple[str, ...] = ()

    @classmethod
    def available(cls, devices: Sequence[str] = (), capabilities: Sequence[str] = ()) -> "Availability":
        return cls(True, "", tuple(devices), tuple(capabilities))

    @classmethod
    def unavailable(cls, reason: str) -> "Availability":
        return cls(False, reason)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: Tuple[Dim, ...]
    #: Other names the runtime knows the same tensor by (OpenVINO ports carry several:
    #: ``input_image`` and an internal alias); config.pbtxt may use any of them.
    aliases: Tuple[str, ...] = ()

    @property
    def names(self) -> Tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class LoadRequest:
    """What the backend asks a provider to load."""

    artifacts: ModelArtifacts
    precision: str = "fp32"
    # Provider-specific options, already stripped of their "<provider>." prefix.
    options: Mapping[str, str] = field(default_factory=dict)
    device_id: int = 0
    #: Instances of the model loaded side by side (each its own process and session):
    #: a provider may size or tune its threads by it.
    instances: int = 1
    #: Serve a route export measured out of budget (the operator asked for it by name:
    #: parameter ``allow_unmeasured``); see :mod:`portable_ep.backends.routes`.
    allow_unmeasured: bool = False


class Session(abc.ABC):
    """A loaded model on one provider. Not thread-safe: one per Triton instance."""

    provider: str = ""
    #: One line for logs: runtime, version, device and precision actually used.
    description: str = ""
    #: Where it runs, for /metrics: "cpu", "cuda:0", "npu-emulated", ...
    device: str = ""
    precision: str = "fp32"
    inputs: Sequence[TensorInfo] = ()
    outputs: Sequence[TensorInfo] = ()
    #: The bundle variant the session runs (set by the provider that chose it): with the
    #: provider and precision it names the route whose measurement decides if it may serve.
    variant: Optional[Variant] = None

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict:
        """Run one batch; returns ``{output name: ndarray}`` for every model output."""

    def close(self) -> None:  # pragma: no cover - default is nothing to release
        pass


class Provider(abc.ABC):
    name: str = ""
    #: Formats of the variants this provider runs, in the order it prefers them.
    variant_formats: Tuple[str, ...] = ("onnx", "openvino")

    def auto_precision_order(self, options: Mapping[str, str]) -> Tuple[str, ...]:
        """Stored precisions, fastest first on this provider, for ``precision: auto``.

        ``auto`` serves the first one whose bundle variant the exporter measured within
        budget. A provider that says nothing gets fp32 only: never a guess at speed.
        """
        return ("fp32",)

    def auto_precision_note(self, options: Mapping[str, str]) -> str:
        """Why :meth:`auto_precision_order` is what it is on this machine, for the log ("" when it is the usual)."""
        return ""

    @abc.abstractmethod
    def probe(self) -> Availability:
        """Is the runtime installed and a device present? Cheap, never raises."""

    @abc.abstractmethod
    def load(self, request: LoadRequest) -> Session:
        """Load the model; raise :class:`ProviderUnavailable` if this provider cannot serve it."""


def check_supported_precision(provider: str, precision: str, supported: Sequence[str]) -> None:
    if precision not in supported:
        raise ProviderUnavailable(
            f"{provider} does not run precision {precision!r} "
            f"(it runs {', '.join(supported)}); set parameter precision to one of those "
            "or put another provider first in the chain"
        )


TRUE_VALUES = ("1", "true", "yes", "on")


def option_is_true(options: Mapping[str, str], key: str) -> bool:
    """A yes/no provider option: 1/true/yes/on (any case) mean yes, anything else no."""
    return str(options.get(key, "")).strip().lower() in TRUE_VALUES


def option_as_int(options: Mapping[str, str], key: str, provider: str) -> Optional[int]:
    value = options.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ProviderUnavailable(f"option {provider}.{key}={value!r} is not an integer") from None


def select_variant(provider: str, request: LoadRequest, formats: Sequence[str], stored_precision: str) -> Variant:
    """The model variant a provider runs, or ProviderUnavailable saying which one is missing.

    A route export measured out of budget for this provider is refused here, before the
    runtime spends time loading it, unless the operator allowed it by name.
    """
    variant = request.artifacts.find(formats, stored_precision)
    if variant is None:
        raise ProviderUnavailable(request.artifacts.missing(provider, formats, stored_precision))
    verdict = route_verdict(variant.routes, provider, variant.precision, request.precision)
    if verdict.status == OUT_OF_BUDGET and not request.allow_unmeasured:
        raise ProviderUnavailable(
            f"the export measured {provider} on {variant.path.name} ({request.precision}) {verdict.describe()}: "
            f"not served (set parameter {ALLOW_UNMEASURED}=true, `repo add --allow-unmeasured`, to serve it anyway)"
        )
    return variant
