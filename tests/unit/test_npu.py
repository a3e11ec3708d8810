"""The npu provider: the NPU contract enforced at load, and the labelled CPU emulation, in-process.

This machine has no NPU, so a real load runs the emulation path; the NPU path's
decisions are checked with OpenVINO's device list and compile call intercepted.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from inputs import mlp_input
from npu_models import build_static_mlp, build_topk_model, write_npu_bundle
from portable_ep.backends import LoadRequest, ProviderUnavailable, find_model_artifacts
from portable_ep.backends import npu
from portable_ep.backends.npu import NPU_SUPPORTED_OPS, NpuProvider, parse_static_shapes
from portable_ep.backends.openvino_cpu import OpenVINOCpuProvider
from portable_ep.python_backend.batching import BatchExecutor, RequestError
from portable_ep.python_backend.model_config import ServingConfig, TensorSpec

F32 = np.dtype(np.float32)


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("npu-static")
    onnx_path = build_static_mlp(root / "static_mlp.onnx", seed=0, batch=1)
    return write_npu_bundle(root / "bundle", onnx_path)


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory, model_files):
    # fp16 only: the dynamic model is refused before precision matters, and fp16 needs no calibration.
    return write_npu_bundle(tmp_path_factory.mktemp("npu-dynamic"), model_files["mlp"], precisions=("fp16",))


@pytest.fixture(scope="module")
def topk_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("npu-topk")
    return write_npu_bundle(root / "bundle", build_topk_model(root / "topk.onnx"), precisions=("fp16",))


def _load(folder, precision="int8", **options):
    return NpuProvider().load(LoadRequest(find_model_artifacts(folder), precision=precision, options=options))


def test_probe_without_an_npu_says_emulated():
    availability = NpuProvider().probe()
    assert availability.ok and availability.devices == ("emulated",)
    assert any("emulated" in c for c in availability.capabilities)


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_static_low_precision_model_runs_labelled_as_emulated(static_bundle, precision):
    session = _load(static_bundle, precision)
    assert session.provider == "npu" and session.device == "npu-emulated"
    assert "emulated" in session.description and f"model.{precision}.xml" in session.description
    assert [t.shape for t in session.inputs] == [(1, 16)]
    # Emulation is the CPU running the same IR: it must match the openvino provider exactly.
    cpu = OpenVINOCpuProvider().load(LoadRequest(find_model_artifacts(static_bundle), precision=precision))
    for seed in range(4):
        feeds = mlp_input(1, seed=seed)
        assert np.max(np.abs(session.run(feeds)["logits"] - cpu.run(feeds)["logits"])) <= 1e-6


def test_low_precision_outputs_stay_near_fp32(static_bundle, reference_run):
    # static_mlp and mlp share their weights (same seed), so the dynamic model is the fp32 reference.
    rows = [mlp_input(1, seed=seed) for seed in range(32)]
    expected = np.concatenate([reference_run("mlp", f)["logits"] for f in rows])
    fp16 = np.concatenate([_load(static_bundle, "fp16").run(f)["logits"] for f in rows])
    assert np.max(np.abs(fp16 - expected)) <= 1e-2
    # Per-tensor int8 on a tiny random MLP: judged as a classifier, not element by element.
    session = _load(static_bundle, "int8")
    int8 = np.concatenate([session.run(f)["logits"] for f in rows])
    assert np.mean(np.abs(int8 - expected)) <= 0.1
    assert np.mean(int8.argmax(1) == expected.argmax(1)) >= 0.9


def test_fp32_is_refused_with_the_export_fix(static_bundle):
    with pytest.raises(ProviderUnavailable, match=r"npu contract: precision 'fp32' .*--precisions fp32,int8` and set parameter precision int8"):
        _load(static_bundle, "fp32")


def test_missing_variant_names_the_precision(dynamic_bundle):
    with pytest.raises(ProviderUnavailable, match=r"npu runs openvino/onnx models and .* has no int8 one"):
        _load(dynamic_bundle, "int8")


def test_dynamic_shapes_are_refused_with_the_option_that_fixes_them(dynamic_bundle):
    with pytest.raises(ProviderUnavailable, match=r"input shapes must be static, and x is \[\?x16\]; set parameter npu.static_shapes \(e.g. x:1x16\)"):
        _load(dynamic_bundle, "fp16")


def test_static_shapes_option_makes_a_dynamic_model_static(dynamic_bundle, reference_run):
    session = _load(dynamic_bundle, "fp16", static_shapes="x:3x16")
    assert [t.shape for t in session.inputs] == [(3, 16)]
    feeds = mlp_input(3, seed=12)
    assert np.max(np.abs(session.run(feeds)["logits"] - reference_run("mlp", feeds)["logits"])) <= 1e-2


@pytest.mark.parametrize(
    "value, message",
    [
        ("x=1x16", r"'x=1x16' is not NAME:DIMS"),
        ("x:1xN", r"'x:1xN' is not NAME:DIMS"),
        ("x:0x16", r"'x:0x16' is not NAME:DIMS"),
        ("input_ids:1x16", r"names input_ids, which the model does not have \(inputs: x\)"),
    ],
)
def test_bad_static_shapes_are_refused(dynamic_bundle, value, message):
    with pytest.raises(ProviderUnavailable, match=message):
        _load(dynamic_bundle, "fp16", static_shapes=value)


def test_static_shapes_parse_names_with_colons():
    assert parse_static_shapes(" input:0:1x128 , mask:1X128,") == {"input:0": (1, 128), "mask": (1, 128)}


def test_ops_outside_the_allow_list_are_listed(topk_bundle):
    assert "TopK" not in NPU_SUPPORTED_OPS
    with pytest.raises(ProviderUnavailable, match=r"ops an NPU does not run \(TopK x1\)"):
        _load(topk_bundle, "fp16")


def test_unknown_option_and_required_device(static_bundle):
    with pytest.raises(ProviderUnavailable, match=r"unknown option\(s\) npu.static_shape;"):
        _load(static_bundle, static_shape="x:1x16")
    with pytest.raises(ProviderUnavailable, match=r"no device: OpenVINO sees no NPU \(devices: CPU\); install the NPU driver or drop npu.require_device"):
        _load(static_bundle, require_device="true")


def test_wrong_shape_is_refused_naming_input_and_shapes(static_bundle):
    session = _load(static_bundle)
    with pytest.raises(ValueError, match=r"input 'x' has shape \[2, 16\] but the npu model is compiled for the static shape \[1, 16\]"):
        session.run(mlp_input(2, seed=1))


def test_batcher_retries_a_stacked_batch_one_request_at_a_time(static_bundle, reference_run):
    """Triton may hand three requests at once; stacked they break the static shape, alone they fit."""
    config = ServingConfig("m", 4, (TensorSpec("x", F32, (16,)),), (TensorSpec("logits", F32, (4,)),))
    executor = BatchExecutor(config, _load(static_bundle, "fp16"))
    requests = [mlp_input(1, seed=1), mlp_input(2, seed=2), mlp_input(1, seed=3)]
    results = executor.execute(requests)
    for index in (0, 2):
        expected = reference_run("mlp", requests[index])["logits"]
        assert np.max(np.abs(results[index]["logits"] - expected)) <= 1e-2
    assert isinstance(results[1], RequestError)
    assert "npu failed on this request: input 'x' has shape [2, 16]" in str(results[1])


class _PretendNpuCore:
    """The real OpenVINO core, except that it lists an NPU and compiles "NPU" work on the CPU."""

    compiled_on = None

    def __init__(self):
        import openvino as ov

        self._core = ov.Core()
        self.available_devices = ["CPU", "NPU"]

    def read_model(self, path):
        return self._core.read_model(path)

    def compile_model(self, model, device, config):
        _PretendNpuCore.compiled_on = (device, dict(config))
        return self._core.compile_model(model, "CPU", {})

    def get_property(self, device, name):
        return "Intel(R) AI Boost" if device == "NPU" else self._core.get_property(device, name)


def test_a_real_npu_is_used_and_named(monkeypatch, static_bundle, tmp_path):
    import openvino as ov

    fake_ov = types.SimpleNamespace(Core=_PretendNpuCore, PartialShape=ov.PartialShape, get_version=ov.get_version)
    monkeypatch.setattr(npu, "_import_openvino", lambda: fake_ov)
    provider = NpuProvider()
    assert provider.probe().devices == ("NPU",)
    session = _load(static_bundle, cache_dir=str(tmp_path), require_device="true")
    assert _PretendNpuCore.compiled_on == ("NPU", {"CACHE_DIR": str(tmp_path)})  # no CPU precision hint on an NPU
    assert session.device == "npu" and "NPU (Intel(R) AI Boost)" in session.description
    assert "emulated" not in session.description


def test_compiled_blobs_are_cached_and_a_reload_says_so(static_bundle, tmp_path):
    cache = tmp_path / "npu-cache"
    first = _load(static_bundle, cache_dir=str(cache))
    assert list(cache.glob("*.blob")) and "from cache" not in first.description
    second = _load(static_bundle, cache_dir=str(cache))
    assert second.description.endswith(f"compiled blob from cache {cache}")
    np.testing.assert_array_equal(first.run(mlp_input(1, seed=4))["logits"], second.run(mlp_input(1, seed=4))["logits"])


def test_the_cache_defaults_to_the_user_cache_and_can_be_turned_off(static_bundle, private_cache_home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _load(static_bundle)
    assert list((tmp_path / "portable-ep" / "npu").glob("*.blob"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    assert "from cache" not in _load(static_bundle, cache_dir="off").description
    assert not (tmp_path / "elsewhere").exists()
