"""Generated inputs follow the user's calibration/golden file (exporters/inputs.py InputProfile):
shapes, value ranges and integrality; without one, static dims and a batch of 1 for a model that cannot batch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.inputs import InputProfile, generate_inputs, profiles_of
from portable_ep.exporters.signature import Signature, TensorSpec

F32, I64 = np.dtype("float32"), np.dtype("int64")


def signature(*specs, batchable=None):
    return Signature(tuple(TensorSpec(n, d, s) for n, d, s in specs), (TensorSpec("y", F32, ("batch", 4)),), batchable)


def test_ids_stored_as_floats_stay_whole_numbers_within_the_range_seen():
    user = {"chars": np.random.default_rng(0).integers(3, 41, size=(5, 37)).astype(np.float32)}
    profile = profiles_of(user)["chars"]
    assert profile.integral and profile.shape == (37,) and 3 <= profile.low <= profile.high <= 40
    feeds = generate_inputs(signature(("chars", F32, ("batch", "seq"))), 16, profiles={"chars": profile})
    chars = feeds["chars"]
    assert chars.shape == (16, 37) and chars.dtype == np.float32  # the window length of the file, not 128
    assert np.all(chars == np.round(chars)) and chars.min() >= profile.low and chars.max() <= profile.high
    assert len(np.unique(chars)) > 5  # ids, not one constant


def test_audio_window_keeps_its_length_and_range():
    rng = np.random.default_rng(1)
    user = {"input_values": (rng.standard_normal((4, 1760)) * 0.1).astype(np.float32)}
    profiles = {k: v.as_dict() for k, v in profiles_of(user).items()}  # as the manifest stores them
    feeds = generate_inputs(signature(("input_values", F32, ("batch", "samples"))), 3, profiles=profiles,
                            dim_sizes={"samples": 16000})  # the file's window beats a default
    audio = feeds["input_values"]
    assert audio.shape == (3, 1760)
    assert audio.min() >= user["input_values"].min() and audio.max() <= user["input_values"].max()
    assert np.ptp(audio) > 0.1 * np.ptp(user["input_values"])


def test_input_shape_option_still_beats_the_file():
    profile = InputProfile((37,), 0.0, 40.0, True, 20.0, 10.0)
    feeds = generate_inputs(signature(("chars", F32, ("batch", "seq"))), 2, profiles={"chars": profile},
                            shapes={"chars": (1, 50)})
    assert feeds["chars"].shape == (2, 50)


def test_a_batch_one_graph_gets_batch_one():
    # A model export found cannot batch: samples on a leading axis of their own, each a batch of 1.
    sig = Signature((TensorSpec("x", F32, ("N", 1760)),), (TensorSpec("y", F32, ()),), batchable=False)
    assert generate_inputs(sig, 4)["x"].shape == (4, 1, 1760)  # without a file: N is 1, not 128
    user = {"x": np.zeros((3, 1, 1760), dtype=np.float32) + np.linspace(-1, 1, 1760, dtype=np.float32)}
    assert generate_inputs(sig, 4, profiles=profiles_of(user))["x"].shape == (4, 1, 1760)


def test_integer_input_without_vocabulary_is_generated_from_the_file():
    sig = signature(("class_id", I64, ("batch", 1)))
    with pytest.raises(ExportError, match="cannot generate values for integer input 'class_id'.*--calibration"):
        generate_inputs(sig, 2)
    profile = profiles_of({"class_id": np.array([[2], [5], [9]])})
    values = generate_inputs(sig, 64, profiles=profile)["class_id"]
    assert values.dtype == np.int64 and values.min() >= 2 and values.max() <= 9


def test_masks_and_constants_from_the_file():
    sig = signature(("input_ids", I64, ("batch", "seq")), ("attention_mask", I64, ("batch", "seq")),
                    ("flag", F32, ("batch", 1)))
    user = {"input_ids": np.array([[5, 9, 12, 4]]), "attention_mask": np.ones((1, 4), dtype=np.int64),
            "flag": np.array([[0.5]], dtype=np.float32)}
    feeds = generate_inputs(sig, 3, profiles=profiles_of(user), vocab_sizes={"input_ids": 10})
    assert feeds["input_ids"].shape == (3, 4) and feeds["input_ids"].max() <= 9  # within the file and the vocabulary
    assert (feeds["attention_mask"] == 1).all() and (feeds["flag"] == 0.5).all()


def test_normal_floats_take_the_file_s_mean_spread_and_bounds():
    rng = np.random.default_rng(2)
    user = {"x": (100 + 5 * rng.standard_normal((64, 8))).astype(np.float32)}
    x = generate_inputs(signature(("x", F32, ("batch", 8))), 256, profiles=profiles_of(user))["x"]
    assert abs(x.mean() - 100) < 1 and 3 < x.std() < 7 and x.min() >= user["x"].min() and x.max() <= user["x"].max()


def test_export_generates_golden_inputs_like_the_calibration_file(tmp_path):
    """The issue's case end to end: character ids stored as floats, in windows of 37. Standard-normal
    golden inputs of length 128 would index the embedding table with negative ids and fail."""
    from portable_ep.exporters.bundle import ExportOptions, export_bundle
    from portable_ep.models.tiny import build_float_ids

    build_float_ids(tmp_path / "chars.onnx")
    calibration = {"chars": np.random.default_rng(4).integers(0, 41, size=(16, 37)).astype(np.float32)}
    np.savez(tmp_path / "calibration.npz", **calibration)
    result = export_bundle(tmp_path / "chars.onnx", tmp_path / "bundle", ExportOptions(
        formats=("onnx",), precisions=("fp32",), calibration=str(tmp_path / "calibration.npz"), progress=False))
    with np.load(tmp_path / "bundle" / "reference" / "inputs.npz") as data:
        chars = data["chars"]
    assert chars.shape == (32, 37) and np.all(chars == np.round(chars)) and 0 <= chars.min() and chars.max() <= 40
    generation = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["generation"]
    assert generation["profiles"]["chars"]["shape"] == [37] and generation["profiles"]["chars"]["integral"]
    assert "shaped and ranged like your file" in result.manifest["reference"]["origin"]
    # portable-ep check generates its random sample from the same record.
    again = generate_inputs(Signature.from_dict(result.manifest["signature"]), 8, profiles=generation["profiles"])
    assert again["chars"].shape == (8, 37) and again["chars"].max() <= 40


def _conv_model(path, kernel: int):
    """A 1-D convolution over a free-length signal: it needs at least ``kernel`` samples."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(5).standard_normal((4, 1, kernel)).astype(np.float32) / kernel
    graph = helper.make_graph(
        [helper.make_node("Conv", ["signal", "w"], ["features"], strides=[kernel // 2]),
         helper.make_node("ReduceMean", ["features"], ["y"], axes=[2], keepdims=0)],
        "conv", [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["batch", 1, "length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_export_retries_a_longer_free_dim_when_the_default_is_too_short(tmp_path):
    from portable_ep.exporters.bundle import ExportOptions, export_bundle

    source = _conv_model(tmp_path / "conv400.onnx", 400)  # 128 samples are too few for a 400-sample kernel
    result = export_bundle(source, tmp_path / "bundle", ExportOptions(formats=("onnx",), precisions=("fp32",), progress=False))
    assert result.manifest["reference"]["sequence_length"] == 512
    with np.load(tmp_path / "bundle" / "reference" / "inputs.npz") as data:
        assert data["signal"].shape == (32, 1, 512)


def test_an_input_that_cannot_be_made_to_run_is_named_with_the_arrays_to_supply(tmp_path):
    from portable_ep.exporters.bundle import ExportOptions, export_bundle

    source = _conv_model(tmp_path / "conv5000.onnx", 5000)
    with pytest.raises(ExportError) as caught:
        export_bundle(source, tmp_path / "bundle", ExportOptions(formats=("onnx",), precisions=("fp32",), progress=False))
    message = str(caught.value)
    assert "--golden FILE.npz holding 'signal' float32 [N, 1, length]" in message and "\n" not in message
    assert not (tmp_path / "bundle").exists()
