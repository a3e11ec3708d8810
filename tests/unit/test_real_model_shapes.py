"""What real ONNX files look like, as export reads them: dims spelled -1/0/?/unnamed/expressions,
scalar inputs, models that cannot batch, the samples layout, and tools' error messages."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from portable_ep.cli import main
from portable_ep.exporters.errors import ExportError, one_line
from portable_ep.exporters.inputs import check_inputs, generate_inputs
from portable_ep.exporters.samples import join, model_calls, to_unbatched
from portable_ep.exporters.signature import signature_from_onnx
from portable_ep.exporters.synthetic import is_image_shape, natural_images


def _save(graph, path, opset=13):
    import onnx

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _value(name, dims, elem=TensorProto.FLOAT):
    value = helper.make_tensor_value_info(name, elem, [])
    shape = value.type.tensor_type.shape
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        elif dim is not None:
            entry.dim_param = dim
    return value


def test_every_spelling_of_any_size_is_symbolic_and_unnamed_dims_are_distinct():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [_value("x", [-1, 3, "?", "?"])],
        [_value("y", [0, 3, "floor(h/2)", None])],
    )
    sig = signature_from_onnx(helper.make_model(graph))
    assert sig.inputs[0].shape == ("x_dim0", 3, "x_dim2", "x_dim3")
    assert sig.outputs[0].shape == ("y_dim0", 3, "floor(h/2)", "y_dim3")
    assert sig.batched


def _scalar_rate_model(path):
    """y = x * sr (a scalar input, as Silero VAD's sample rate): cannot batch by its shapes."""
    nodes = [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "srf"], ["y"])]
    graph = helper.make_graph(nodes, "scalar", [_value("x", ["n", 4]), _value("sr", [], TensorProto.INT64)],
                              [_value("y", ["n", 4])])
    return _save(graph, path)


def _batch_one_reshape_model(path):
    """Dims say any batch, but the graph reshapes to a batch of 1: only running it shows that."""
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "one_row")
    nodes = [helper.make_node("Reshape", ["x", "one_row"], ["flat"]),
             helper.make_node("ReduceSum", ["flat"], ["y"], keepdims=1)]
    graph = helper.make_graph(nodes, "reshape1", [_value("x", ["batch", 4])], [_value("y", ["batch", 1])], [shape])
    return _save(graph, path)


def test_scalar_input_error_prints_the_npz_to_write(tmp_path, capsys):
    model = _scalar_rate_model(tmp_path / "scalar.onnx")
    code = main(["export", str(model), str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "'x' float32 [N, n, 4], 'sr' int64 [N]" in err and "leading sample axis" in err


def test_scalar_input_exports_unbatched_from_a_calibration_file(tmp_path, capsys):
    model = _scalar_rate_model(tmp_path / "scalar.onnx")
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=np.random.default_rng(0).standard_normal((6, 2, 4)).astype(np.float32),
             sr=np.full((6,), 16000, dtype=np.int64))
    code = main(["export", str(model), str(tmp_path / "out"), "--no-progress", "--calibration", str(calibration),
                 "--formats", "onnx", "--precisions", "fp32,fp16"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["signature"]["batched"] is False and manifest["batching"]["reason"] == "shapes: 'sr' is a scalar"
    assert manifest["reference"]["layout"] == "leading sample axis"
    code = main(["repo", "add", str(tmp_path / "out"), "--repo", str(tmp_path / "repo"), "--name", "m"])
    out = capsys.readouterr().out
    assert code == 0 and "max_batch_size 0: the model cannot batch ('sr' is a scalar)" in out
    config = (tmp_path / "repo" / "m" / "config.pbtxt").read_text()
    assert "max_batch_size" not in config and 'name: "sr"\n  data_type: TYPE_INT64\n  dims: 1\n}' in config


def test_batching_is_measured_not_read_off_the_shapes(tmp_path, capsys):
    model = _batch_one_reshape_model(tmp_path / "reshape1.onnx")
    code = main(["export", str(model), str(tmp_path / "out"), "--no-progress", "--formats", "onnx",
                 "--precisions", "fp32"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["signature"]["batched"] is False
    assert "for a batch of 2" in manifest["batching"]["reason"]
    with np.load(tmp_path / "out" / "reference" / "inputs.npz") as data:
        assert data["x"].shape == (32, 1, 4)  # 32 samples, each the model's own (1, 4)


def test_samples_layout_round_trips():
    feeds = {"x": np.arange(24, dtype=np.float32).reshape(6, 4)}
    assert [c["x"].shape for c in model_calls(feeds, True, 4)] == [(4, 4), (2, 4)]
    unbatched = to_unbatched(feeds)
    calls = list(model_calls(unbatched, False))
    assert len(calls) == 6 and calls[0]["x"].shape == (1, 4)
    assert np.array_equal(join(calls, False)["x"], unbatched["x"])


def test_calibration_layout_is_checked_for_a_model_that_does_not_batch(tmp_path):
    from portable_ep.exporters.signature import Signature, TensorSpec

    sig = Signature((TensorSpec("state", np.dtype("float32"), (2, "b", 128)), TensorSpec("sr", np.dtype("int64"), ())),
                    (TensorSpec("y", np.dtype("float32"), (2, "b", 128)),))
    assert not sig.batched
    check_inputs({"state": np.zeros((5, 2, 1, 128), np.float32), "sr": np.full((5,), 16000)}, sig, "calibration file")
    with pytest.raises(ExportError, match=r"'state' has shape \(2, 1, 128\); write 'state' float32 \[N, 2, b, 128\]"):
        check_inputs({"state": np.zeros((2, 1, 128), np.float32), "sr": np.full((5,), 16000)}, sig, "calibration file")


def test_generated_images_look_like_images_not_noise():
    images = natural_images(np.random.default_rng(0), (4, 3, 64, 96), channels_last=False)
    assert images.shape == (4, 3, 64, 96) and 0.0 <= images.min() and images.max() <= 1.0
    # Neighbouring pixels are strongly correlated in a natural image and not at all in noise.
    corr = np.corrcoef(images[:, :, :, 1:].ravel(), images[:, :, :, :-1].ravel())[0, 1]
    assert corr > 0.8
    assert is_image_shape((1, 3, 224, 224)) == "nchw" and is_image_shape((1, 224, 224, 3)) == "nhwc"
    assert is_image_shape((1, 16, 128, 4)) == "nhwc" and is_image_shape((8, 2048)) == ""


def test_image_inputs_with_symbolic_channels_and_size_get_rgb_224():
    from portable_ep.exporters.signature import Signature, TensorSpec

    sig = Signature((TensorSpec("pixel_values", np.dtype("float32"), ("batch_size", "num_channels", "height", "width")),),
                    (TensorSpec("logits", np.dtype("float32"), ("batch_size", 10)),))
    origins = {}
    feeds = generate_inputs(sig, 2, origins=origins)
    assert feeds["pixel_values"].shape == (2, 3, 224, 224) and origins["pixel_values"].startswith("synthetic natural images")


def test_tool_errors_keep_their_cause_not_their_source_location():
    openvino = RuntimeError(
        "Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
        "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted.\n\nSummary:\n"
        "-- Conversion is failed for: Conv-16, ReduceMean-16\n")
    assert one_line(openvino) == ("RuntimeError: FrontEnd API failed with OpConversionFailure "
                                  "(Conversion is failed for: Conv-16, ReduceMean-16)")
    infer = RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:224:\nInput shape [1,3,8,8] is too small\n")
    assert one_line(infer) == "RuntimeError: Input shape [1,3,8,8] is too small"
