"""Name → provider class, found through entry points and imported lazily.

Modelled on fsspec's implementation registry: a provider is only imported when a
chain names it, and a name we know but cannot load gets an error that says what to
install.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

from portable_ep.backends.base import Provider, ProviderUnavailable

ENTRY_POINT_GROUP = "portable_ep.providers"


@dataclass(frozen=True)
class KnownProvider:
    target: Optional[str]  # "module:Class", or None when this release does not ship it yet
    summary: str
    install_hint: str


#: Providers portable-ep knows about, whether or not their entry point is installed.
KNOWN_PROVIDERS: Dict[str, KnownProvider] = {
    "cpu": KnownProvider(
        "portable_ep.backends.onnxruntime_cpu:OnnxRuntimeCpuProvider",
        "ONNX Runtime CPUExecutionProvider (the reference)",
        "pip install 'portable-ep[cpu]'",
    ),
    "openvino": KnownProvider(
        "portable_ep.backends.openvino_cpu:OpenVINOCpuProvider",
        "OpenVINO runtime on CPU (fp32 pinned, bf16 on request)",
        "pip install 'portable-ep[openvino]'",
    ),
    "cuda": KnownProvider(
        "portable_ep.backends.onnxruntime_cuda:OnnxRuntimeCudaProvider",
        "ONNX Runtime CUDAExecutionProvider on an NVIDIA GPU",
        "pip install 'portable-ep[cuda]' (onnxruntime-gpu, in place of onnxruntime)",
    ),
    "rocm": KnownProvider(
        "portable_ep.backends.onnxruntime_migraphx:OnnxRuntimeMIGraphXProvider",
        "ONNX Runtime MIGraphXExecutionProvider on an AMD GPU (the ROCm EP is gone from ORT >= 1.23)",
        "pip install onnxruntime-migraphx (in place of onnxruntime), or use the rocm image",
    ),
    "npu": KnownProvider(
        "portable_ep.backends.npu:NpuProvider",
        "NPU contract (static shapes, int8/fp16, op allow-list) on OpenVINO's NPU device, or labelled CPU emulation",
        "pip install 'portable-ep[openvino]'",
    ),
    "ort-openvino": KnownProvider(
        "portable_ep.backends.ort_openvino:OnnxRuntimeOpenVINOProvider",
        "ONNX Runtime OpenVINOExecutionProvider (onnxruntime-openvino)",
        "pip install onnxruntime-openvino (in place of onnxruntime)",
    ),
}


def _load_target(target: str):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _installed_entry_points() -> Dict[str, str]:
    from importlib import metadata

    if sys.version_info >= (3, 10):
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    else:  # pragma: no cover - Python 3.9
        eps = metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    return {ep.name: ep.value for ep in eps}


class ProviderRegistry:
    """Maps provider names to factories. ``get()`` raises ProviderUnavailable with the fix."""

    def __init__(self, targets: Optional[Dict[str, str]] = None, known: Optional[Dict[str, KnownProvider]] = None):
        self._known = dict(KNOWN_PROVIDERS if known is None else known)
        self._targets: Dict[str, str] = {n: k.target for n, k in self._known.items() if k.target}
        self._targets.update(_installed_entry_points() if targets is None else targets)
        self._factories: Dict[str, Callable[[], Provider]] = {}
        self._instances: Dict[str, Provider] = {}

    def register(self, name: str, factory: Callable[[], Provider]) -> None:
        """Register a provider in-process (tests, notebooks); entry points are the normal way."""
        self._factories[name] = factory
        self._instances.pop(name, None)

    def names(self) -> list:
        return sorted(set(self._targets) | set(self._factories) | set(self._known))

    def describe(self, name: str) -> str:
        known = self._known.get(name)
        return known.summary if known else f"third-party provider ({self._targets.get(name, 'registered in-process')})"

    def get(self, name: str) -> Provider:
        if name in self._instances:
            return self._instances[name]
        factory = self._factories.get(name)
        if factory is None:
            target = self._targets.get(name)
            if target is None:
                known = self._known.get(name)
                if known is not None:
                    raise ProviderUnavailable(f"provider {name!r} is not installed: {known.install_hint}")
                raise ProviderUnavailable(
                    f"unknown provider {name!r}; known: {', '.join(self.names())}. "
                    f"A third-party provider registers in the entry-point group {ENTRY_POINT_GROUP!r}"
                )
            try:
                factory = _load_target(target)
            except ImportError as exc:
                hint = self._known[name].install_hint if name in self._known else f"install the package that provides {target}"
                raise ProviderUnavailable(f"provider {name!r} could not be imported ({exc}); {hint}") from None
        instance = factory()
        self._instances[name] = instance
        return instance

    def install_hint(self, name: str) -> str:
        known = self._known.get(name)
        return known.install_hint if known else ""


_default: Optional[ProviderRegistry] = None


def default_registry() -> ProviderRegistry:
    global _default
    if _default is None:
        _default = ProviderRegistry()
    return _default


def available_names(registry: Optional[ProviderRegistry] = None) -> Iterable[str]:
    return (registry or default_registry()).names()
