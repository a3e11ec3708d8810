"""Triton config JSON → ServingConfig, config.pbtxt writing, and load-time signature checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import json_format

from portable_ep.backends import NoProviderAvailable
from portable_ep.exporters.onnx_signature import onnx_signature
from portable_ep.exporters.triton_config import TensorDecl, build_model_config, config_to_pbtxt, parse_pbtxt
from portable_ep.python_backend.model_config import ModelConfigError, parse_model_config
from portable_ep.python_backend.model_loader import load_model


def triton_json(config) -> dict:
    # Triton hands the backend this JSON form; int64 fields such as dims arrive as strings.
    return json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True))


def test_written_config_round_trips_and_parses(model_files):
    inputs, outputs = onnx_signature(model_files["bag_of_words"])
    assert inputs == [TensorDecl("input_ids", np.dtype(np.int64), (-1,)), TensorDecl("attention_mask", np.dtype(np.int64), (-1,))]
    config = build_model_config(
        "bow", inputs, outputs, max_batch_size=16, dynamic_batching_delay_us=500, instances=2,
        providers="openvino,cpu", precision="fp32", parameters={"openvino.num_streams": "1"},
    )
    text = config_to_pbtxt(config)
    assert 'backend: "portable_ep"' in text and "max_queue_delay_microseconds: 500" in text
    assert parse_pbtxt(text) == config
    serving = parse_model_config(triton_json(config))
    assert serving.max_batch_size == 16
    assert serving.input("input_ids").dims == (-1,)
    assert serving.parameters == {"providers": "openvino,cpu", "precision": "fp32", "openvino.num_streams": "1"}


def _hand_written(text: str) -> dict:
    return triton_json(parse_pbtxt(text))


MLP_PBTXT = """
name: "mlp"
backend: "portable_ep"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 4 ] } ]
parameters { key: "providers" value { string_value: "cpu" } }
"""


def test_load_model_from_a_hand_written_config(tmp_path, model_files):
    (tmp_path / "model.onnx").write_bytes(model_files["mlp"].read_bytes())
    loaded = load_model(parse_model_config(_hand_written(MLP_PBTXT)), tmp_path)
    assert loaded.resolution.provider == "cpu" and loaded.precision == "fp32"


@pytest.mark.parametrize(
    "change, message",
    [
        (("dims: [ 16 ]", "dims: [ 15 ]"), "input 'x' dim 0 is 15 in config.pbtxt but 16 in the model"),
        (("TYPE_FP32 dims: [ 16 ]", "TYPE_FP64 dims: [ 16 ]"), "input 'x' is FP64 in config.pbtxt but FP32 in the model"),
        (('name: "logits"', 'name: "probs"'), "output 'probs' is not in the model (the model has logits)"),
        (("max_batch_size: 4", "max_batch_size: 0"), "input 'x' has 1 dims in config.pbtxt (with the batch dim) but the model has 2"),
    ],
)
def test_config_that_disagrees_with_the_model_fails_the_load_clearly(tmp_path, model_files, change, message):
    # The check runs inside the provider chain: the provider is skipped with the differences as
    # its reason, and with no provider left the load fails naming each one.
    (tmp_path / "model.onnx").write_bytes(model_files["mlp"].read_bytes())
    with pytest.raises(NoProviderAvailable) as error:
        load_model(parse_model_config(_hand_written(MLP_PBTXT.replace(*change))), tmp_path)
    assert "cpu: config.pbtxt does not match the model as cpu reads it: " in str(error.value)
    assert message in str(error.value)


def test_bad_parameters_and_missing_files(tmp_path, model_files):
    with pytest.raises(ModelConfigError, match="precision='fp8'"):
        load_model(parse_model_config(_hand_written(MLP_PBTXT + 'parameters { key: "precision" value { string_value: "fp8" } }')), tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.onnx or model.xml"):
        load_model(parse_model_config(_hand_written(MLP_PBTXT)), tmp_path)
    (tmp_path / "model.onnx").write_bytes(model_files["mlp"].read_bytes())
    unservable = MLP_PBTXT.replace('string_value: "cpu"', 'string_value: "cuda,rocm"')
    with pytest.raises(NoProviderAvailable, match="cuda: .*; rocm: "):
        load_model(parse_model_config(_hand_written(unservable)), tmp_path)


def test_config_without_tensors_is_refused_and_reshape_is_what_the_backend_sees():
    with pytest.raises(ModelConfigError, match="must list its inputs and outputs"):
        parse_model_config({"name": "m", "backend": "portable_ep"})
    # Triton hands the backend the reshaped tensor (a batched scalar is dims [1] + reshape []).
    config = _hand_written(MLP_PBTXT.replace("dims: [ 16 ]", "dims: [ 16 ] reshape { shape: [ 4, 4 ] }"))
    assert parse_model_config(config).inputs[0].dims == (4, 4)
    config = _hand_written(MLP_PBTXT.replace("dims: [ 16 ]", "dims: [ 1 ] reshape { shape: [ ] }"))
    assert parse_model_config(config).inputs[0].dims == ()
