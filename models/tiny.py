"""Tiny ONNX models built with onnx.helper from a fixed seed: no download, no framework.

- ``mlp``: a 2-layer perceptron, FP32 ``x [batch, 16]`` → ``logits [batch, 4]``;
- ``static_mlp``: the same perceptron with a fixed batch dim (``x [1, 16]``), the shape an NPU compiles;
- ``identity``: ``x [batch, N]`` → ``y``, the floor for measuring serving overhead;
- ``bag_of_words``: INT64 ``input_ids`` / ``attention_mask [batch, seq]`` → ``logits [batch, 3]``,
  a text classifier with a variable sequence length and a vocabulary to overrun.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime and OpenVINO release we support


def _save(graph, path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    model.producer_name = "portable-ep.models.tiny"
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_mlp(path, seed: int = 0, features: int = 16, hidden: int = 32, classes: int = 4, batch="batch") -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((features, hidden)).astype(np.float32) / np.sqrt(features)
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = rng.standard_normal((hidden, classes)).astype(np.float32) / np.sqrt(hidden)
    b2 = rng.standard_normal(classes).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    return _save(graph, path)


def build_static_mlp(path, seed: int = 0, batch: int = 1) -> Path:
    """``mlp`` with every dim fixed: NPUs compile one shape, so this is what they serve."""
    return build_mlp(path, seed=seed, batch=batch)


def build_identity(path, features: int = 16) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
    )
    return _save(graph, path)


def build_bag_of_words(path, seed: int = 0, vocab: int = 100, embed: int = 16, classes: int = 3) -> Path:
    """Mean of token embeddings under the attention mask, then a linear classifier."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, embed)).astype(np.float32)
    weight = rng.standard_normal((embed, classes)).astype(np.float32) / np.sqrt(embed)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),  # [b, s, e]
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),  # [b, s]
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),  # [b, s, 1]
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_seq"], ["summed"], keepdims=0),  # [b, e]
        helper.make_node("ReduceSum", ["maskf", "axis_seq"], ["count"], keepdims=1),  # [b, 1]
        helper.make_node("Max", ["count", "one"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "weight"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_seq"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "bag_of_words",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializers,
    )
    return _save(graph, path)


BUILDERS = {"mlp": build_mlp, "static_mlp": build_static_mlp, "identity": build_identity, "bag_of_words": build_bag_of_words}
