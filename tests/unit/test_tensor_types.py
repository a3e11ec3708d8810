"""Every Triton type end to end, below the server: BF16 on both runtimes and across DLPack, tensors
known by several names, a provider that cannot take a model's I/O skipped inside the chain, and
types Triton cannot carry refused by name. Real ONNX Runtime and OpenVINO sessions on models
built here; the served proof is tests/conformance/test_served_node_tests.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import json_format
from onnx import TensorProto, helper

from portable_ep.backends import NoProviderAvailable
from portable_ep.backends.dtypes import (
    bfloat16,
    dtype_named,
    numpy_to_triton_type,
    triton_type_to_numpy,
    wire_type_name,
)
from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.signature import signature_from_onnx
from portable_ep.exporters.triton_config import TensorDecl, build_model_config
from portable_ep.python_backend.model_config import parse_model_config
from portable_ep.python_backend.model_loader import load_model

BF16 = bfloat16()


def _save(model, path):
    import onnx

    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _serving_config(name, inputs, outputs, providers):
    config = build_model_config(name, inputs, outputs, max_batch_size=0, providers=providers)
    return parse_model_config(json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True)))


def test_triton_type_names_cover_bf16_and_strings_and_refuse_the_rest_by_tensor():
    assert numpy_to_triton_type(BF16) == "TYPE_BF16" and triton_type_to_numpy("TYPE_BF16") == BF16
    assert triton_type_to_numpy("BF16") == BF16
    assert wire_type_name(np.dtype(object)) == "BYTES" and wire_type_name(BF16) == "BF16"
    assert dtype_named("bfloat16") == BF16 and dtype_named("uint64") == np.dtype(np.uint64)
    with pytest.raises(ValueError, match=r"output 'y' has element type float8_e4m3fn, which Triton cannot carry"):
        numpy_to_triton_type(dtype_named("float8_e4m3fn"), "output 'y'")
    with pytest.raises(ValueError, match="not one Triton carries"):
        triton_type_to_numpy("TYPE_FP8")


def test_bf16_crosses_dlpack_both_ways_and_every_lent_array_is_released():
    """The python stub has no numpy form for BF16: the backend reads and writes DLPack itself."""
    import gc

    torch = pytest.importorskip("torch")
    from torch.utils import dlpack

    from portable_ep.python_backend.bf16_dlpack import bfloat16_from_dlpack, bfloat16_to_dlpack, lent_count

    for values in (np.array([[-1.0, 2.5, 3.0], [4.0, -5.0, 6.125]]), np.array(1.25), np.zeros((0, 3))):
        array = values.astype(BF16)
        served = dlpack.from_dlpack(bfloat16_to_dlpack(array))
        assert served.dtype == torch.bfloat16 and tuple(served.shape) == array.shape
        assert served.view(torch.int16).numpy().tobytes() == array.view(np.uint16).tobytes()
        back = bfloat16_from_dlpack(dlpack.to_dlpack(served))
        assert back.dtype == BF16 and back.shape == array.shape and np.array_equal(back.view(np.uint16), array.view(np.uint16))
        del served
    unused = bfloat16_to_dlpack(np.ones(2, BF16))
    del unused
    gc.collect()
    assert lent_count() == 0
    with pytest.raises(ValueError, match="not bfloat16"):
        bfloat16_from_dlpack(dlpack.to_dlpack(torch.ones(2)))


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    """x (BF16) -> y = x (BF16) and z = float(x); f (FP32) -> b = bfloat16(f)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Cast", ["x"], ["z"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["f"], ["b"], to=TensorProto.BFLOAT16)],
        "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 3]),
                 helper.make_tensor_value_info("f", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 3]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.BFLOAT16, [2, 3])])
    folder = tmp_path_factory.mktemp("bf16")
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    return folder


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_bf16_inputs_and_outputs_run_bit_exact_on_both_runtimes(bf16_model, provider):
    decls = lambda names: [TensorDecl(n, BF16 if n in "xyb" else np.dtype(np.float32), (2, 3)) for n in names]  # noqa: E731
    loaded = load_model(_serving_config("bf16", decls("xf"), decls("yzb"), provider), bf16_model)
    session = loaded.resolution.session
    assert loaded.resolution.provider == provider
    assert {t.name: t.dtype for t in session.outputs} == {"y": BF16, "z": np.dtype(np.float32), "b": BF16}
    x = np.array([[-1.0, 2.5, 3.0], [4.0, -5.0, 6.125]]).astype(BF16)
    f = np.array([[0.1, -0.2, 1e3], [3.14159, -7.0, 65504.0]], np.float32)
    out = session.run({"x": x, "f": f})
    assert out["y"].dtype == BF16 and out["y"].view(np.uint16).tolist() == x.view(np.uint16).tolist()
    assert out["z"].tolist() == x.astype(np.float32).tolist()  # OpenVINO no longer reads the bits as float16
    # Both runtimes round float32 to nearest even, as ml_dtypes does.
    assert out["b"].view(np.uint16).tolist() == f.astype(BF16).view(np.uint16).tolist()
    session.close()


def _ir_with_aliases(folder):
    import openvino as ov
    from openvino import opset13 as ops

    image = ops.parameter([1, 4], ov.Type.f32, name="input_image")
    image.output(0).get_tensor().set_names({"input_image", "x.1"})
    relu = ops.relu(image)
    relu.output(0).get_tensor().set_names({"logits", "relu_out"})
    ov.save_model(ov.Model([relu], [image], "aliases"), str(folder / "model.xml"))
    return folder


@pytest.mark.parametrize("names", [("input_image", "logits"), ("x.1", "relu_out")])
def test_a_tensor_with_several_names_is_matched_by_any_of_them(tmp_path, names):
    folder = _ir_with_aliases(tmp_path)
    inputs, outputs = [TensorDecl(names[0], np.dtype(np.float32), (1, 4))], [TensorDecl(names[1], np.dtype(np.float32), (1, 4))]
    loaded = load_model(_serving_config("vit", inputs, outputs, "openvino"), folder)
    session = loaded.resolution.session
    # The session now names its tensors as config.pbtxt does: feeds, outputs and limits agree.
    assert [t.name for t in session.inputs] == [names[0]] and [t.name for t in session.outputs] == [names[1]]
    result = session.run({names[0]: np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)})
    assert result[names[1]].tolist() == [[0.0, 0.5, 2.0, 0.0]]
    session.close()


def test_a_provider_that_drops_a_zero_size_input_is_skipped_and_the_chain_goes_on(tmp_path):
    """OpenVINO folds CastLike's zero-size `like` input away; the config check refuses it inside the chain."""
    graph = helper.make_graph([helper.make_node("CastLike", ["x", "like"], ["y"])], "castlike",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
                               helper.make_tensor_value_info("like", TensorProto.FLOAT16, [0])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [3])])
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), tmp_path / "model.onnx")
    inputs = [TensorDecl("x", np.dtype(np.float32), (3,)), TensorDecl("like", np.dtype(np.float16), (-1,))]
    outputs = [TensorDecl("y", np.dtype(np.float16), (3,))]
    loaded = load_model(_serving_config("castlike", inputs, outputs, "openvino,cpu"), tmp_path)
    assert loaded.resolution.provider == "cpu"
    [skipped] = loaded.resolution.skipped
    assert skipped.name == "openvino"
    assert skipped.reason == ("config.pbtxt does not match the model as openvino reads it: "
                              "input 'like' is not in the model (the model has x)")
    out = loaded.resolution.session.run({"x": np.array([1.5, -2.0, 3.25], np.float32), "like": np.zeros(0, np.float16)})
    assert out["y"].dtype == np.float16 and out["y"].tolist() == [1.5, -2.0, 3.25]
    loaded.resolution.session.close()
    with pytest.raises(NoProviderAvailable, match="openvino: config.pbtxt does not match"):
        load_model(_serving_config("castlike", inputs, outputs, "openvino"), tmp_path)


def test_io_that_is_not_a_tensor_is_refused_with_the_fix():
    sequence = helper.make_tensor_sequence_value_info("items", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("SequenceLength", ["items"], ["n"])], "g", [sequence],
                              [helper.make_tensor_value_info("n", TensorProto.INT64, [])])
    with pytest.raises(ExportError, match="input 'items' is a sequence, which Triton cannot carry"):
        signature_from_onnx(helper.make_model(graph))
    # skl2onnx's ZipMap output: a sequence of maps, with the converter option that avoids it.
    zipmap = helper.make_value_info("probabilities", helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))))
    graph = helper.make_graph([helper.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])],
                              "g", [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 2])], [zipmap])
    with pytest.raises(ExportError, match=r"output 'probabilities' is a sequence.*options=\{'zipmap': False\}"):
        signature_from_onnx(helper.make_model(graph))


def test_repo_add_refuses_a_type_triton_cannot_carry_by_name():
    from portable_ep.exporters.repository import RepoOptions, _single_pass_config

    manifest = {"signature": {"inputs": [{"name": "x", "dtype": "float32", "shape": [3, 5]}],
                              "outputs": [{"name": "q", "dtype": "float8_e4m3fn", "shape": [3, 5]}], "batched": False}}
    with pytest.raises(ExportError, match=r"model 'cast' cannot be served: output 'q' has element type float8_e4m3fn, "
                                          r"which Triton cannot carry .*cast it to one of those inside the model"):
        _single_pass_config("cast", manifest, RepoOptions(), None)


def test_bf16_beside_strings_runs_where_onnx_runtime_can_and_is_refused_by_name_where_it_cannot(tmp_path):
    def model(folder, bf16_output: bool):
        cast_to = TensorProto.BFLOAT16 if bf16_output else TensorProto.FLOAT
        graph = helper.make_graph(
            [helper.make_node("Cast", ["x"], ["y"], to=cast_to), helper.make_node("StringConcat", ["s", "s"], ["t"])], "mixed",
            [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2]), helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
            [helper.make_tensor_value_info("y", cast_to, [2]), helper.make_tensor_value_info("t", TensorProto.STRING, [2])])
        folder.mkdir()
        _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), folder / "model.onnx")
        inputs = [TensorDecl("x", BF16, (2,)), TensorDecl("s", np.dtype(object), (2,))]
        outputs = [TensorDecl("y", BF16 if bf16_output else np.dtype(np.float32), (2,)), TensorDecl("t", np.dtype(object), (2,))]
        return _serving_config("mixed", inputs, outputs, "cpu"), folder

    loaded = load_model(*model(tmp_path / "float_out", bf16_output=False))
    out = loaded.resolution.session.run({"x": np.array([1.5, -2.0]).astype(BF16), "s": np.array([b"ab", "\u00e9"], dtype=object)})
    assert out["y"].tolist() == [1.5, -2.0] and out["t"].tolist() == ["abab", "\u00e9\u00e9"]
    loaded.resolution.session.close()
    with pytest.raises(NoProviderAvailable, match="cpu: ONNX Runtime's Python API returns bfloat16 outputs only from calls "
                                                  "without string inputs"):
        load_model(*model(tmp_path / "bf16_out", bf16_output=True))


def test_bf16_arrays_come_back_from_npz_as_bf16(tmp_path):
    """numpy stores ml_dtypes.bfloat16 in .npz as 2-byte voids; golden files and calibration files are read back as bf16."""
    from portable_ep.backends.dtypes import restore_bfloat16

    array = np.array([[1.5, -2.0]]).astype(BF16)
    np.savez(tmp_path / "golden.npz", y=array, n=np.arange(3, dtype=np.uint16))
    with np.load(tmp_path / "golden.npz") as data:
        assert data["y"].dtype == np.dtype("V2")
        y, n = restore_bfloat16(data["y"]), restore_bfloat16(data["n"])
    assert y.dtype == BF16 and y.tolist() == [[1.5, -2.0]] and n.dtype == np.uint16
