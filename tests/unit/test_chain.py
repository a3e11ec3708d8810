"""Provider chain resolution with providers injected at the probe boundary."""
from __future__ import annotations

import pytest

from portable_ep.backends import (
    Availability,
    LoadRequest,
    ModelArtifacts,
    NoProviderAvailable,
    Provider,
    ProviderRegistry,
    ProviderUnavailable,
    Session,
    parse_provider_chain,
    resolve_provider_chain,
)
from portable_ep.backends.chain import split_provider_options
from portable_ep.backends.registry import KnownProvider


class FakeSession(Session):
    def __init__(self, name):
        self.provider = name

    def run(self, feeds):
        return {}


class FakeProvider(Provider):
    def __init__(self, name, availability=Availability.available(), load_error=None):
        self.name = name
        self.availability = availability
        self.load_error = load_error
        self.requests = []

    def probe(self):
        return self.availability

    def load(self, request):
        self.requests.append(request)
        if self.load_error is not None:
            raise self.load_error
        return FakeSession(self.name)


def registry_with(*providers, known=None):
    registry = ProviderRegistry(targets={}, known=known or {})
    for provider in providers:
        registry.register(provider.name, lambda p=provider: p)
    return registry


def request_for(name):
    return LoadRequest(ModelArtifacts(root=__import__("pathlib").Path(".")), options={"who": name})


def test_first_usable_provider_wins_and_skips_are_explained():
    registry = registry_with(
        FakeProvider("gpu", Availability.unavailable("no device: no GPU found")),
        FakeProvider("accel", load_error=ProviderUnavailable("needs an int8 variant")),
        FakeProvider("cpu"),
        FakeProvider("never"),
    )
    resolution = resolve_provider_chain(["gpu", "accel", "cpu", "never"], request_for, registry)
    assert resolution.provider == "cpu"
    assert [(s.name, s.reason) for s in resolution.skipped] == [
        ("gpu", "no device: no GPU found"),
        ("accel", "needs an int8 variant"),
    ]
    assert registry.get("cpu").requests[0].options == {"who": "cpu"}
    assert registry.get("never").requests == []


def test_a_runtime_that_rejects_the_model_is_skipped_with_its_error():
    # OpenVINO's first line only says where it raised; the reason keeps the cause.
    error = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nUnsupported op Foo")
    registry = registry_with(FakeProvider("ov", load_error=error), FakeProvider("cpu"))
    resolution = resolve_provider_chain(["ov", "cpu"], request_for, registry)
    assert resolution.skipped[0].reason == "failed to load the model: RuntimeError: Unsupported op Foo"


def test_nothing_usable_lists_every_provider_and_reason():
    known = {"rocm": KnownProvider(None, "AMD", "not in this release")}
    registry = registry_with(FakeProvider("gpu", Availability.unavailable("package missing: install x")), known=known)
    with pytest.raises(NoProviderAvailable) as error:
        resolve_provider_chain(["gpu", "rocm", "mystery"], request_for, registry)
    message = str(error.value)
    assert "gpu: package missing: install x" in message
    assert "rocm: provider 'rocm' is not installed: not in this release" in message
    assert "mystery: unknown provider 'mystery'" in message and "portable_ep.providers" in message
    assert [s.name for s in error.value.skipped] == ["gpu", "rocm", "mystery"]


def test_default_chain_from_environment(monkeypatch):
    monkeypatch.setenv("PORTABLE_EP_PROVIDERS", "npu, cpu")
    assert parse_provider_chain(None) == ["npu", "cpu"]
    assert parse_provider_chain("openvino") == ["openvino"]  # config.pbtxt's own chain wins
    monkeypatch.setenv("PORTABLE_EP_PROVIDERS", " ")
    assert parse_provider_chain("") == ["openvino", "cpu"]


def test_parse_provider_chain(monkeypatch):
    monkeypatch.delenv("PORTABLE_EP_PROVIDERS", raising=False)
    assert parse_provider_chain(" CUDA, openvino ,cpu ") == ["cuda", "openvino", "cpu"]
    assert parse_provider_chain("") == ["openvino", "cpu"]
    assert parse_provider_chain(None) == ["openvino", "cpu"]
    with pytest.raises(ValueError, match="cpu more than once"):
        parse_provider_chain("cpu,openvino,cpu")


def test_provider_options_are_split_by_prefix():
    params = {"providers": "cpu", "openvino.num_streams": "2", "cpu.intra_op_num_threads": "1", "precision": "fp32"}
    assert split_provider_options(params) == {"openvino": {"num_streams": "2"}, "cpu": {"intra_op_num_threads": "1"}}


def test_builtin_providers_are_registered_through_entry_points():
    from portable_ep.backends.registry import _installed_entry_points

    entry_points = _installed_entry_points()
    assert entry_points["cpu"] == "portable_ep.backends.onnxruntime_cpu:OnnxRuntimeCpuProvider"
    assert entry_points["openvino"] == "portable_ep.backends.openvino_cpu:OpenVINOCpuProvider"
    registry = ProviderRegistry(known={})  # entry points only
    assert registry.get("cpu").probe().ok
