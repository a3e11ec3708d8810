"""Tiny ONNX models built with onnx.helper from a fixed seed: no download, no framework.

- ``mlp``: a 2-layer perceptron, FP32 ``x [batch, 16]`` → ``logits [batch, 4]``;
- ``static_mlp``: the same perceptron with a fixed batch dim (``x [1, 16]``), the shape an NPU compiles;
- ``identity``: ``x [batch, N]`` → ``y``, the floor for measuring serving overhead;
- ``bag_of_words``: INT64 ``input_ids`` / ``attention_mask [batch, seq]`` → ``logits [batch, 3]``,
  a text classifier with a variable sequence length and a vocabulary to overrun; with
  ``max_positions`` it adds a position table (``position_embeddings``), as BERT does, so it has
  a longest sequence too;
- ``conv_net``: FP32 ``image [batch, 3, height, width]`` → ``logits [batch, 5]``, two strided
  convolutions and a dense layer sized for 32×32 images: any other size fails inside the
  runtime (the way a real detector fails on an image smaller than its stride).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime and OpenVINO release we support


def _save(graph, path, opset: int = OPSET) -> Path:
    import onnx
    from onnx import helper

    # opset 20 (StringConcat) needs IR version 9.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=IR_VERSION if opset <= 18 else 9)
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


def build_saturating_cast(path, features: int = 16, scale: float = 100.0) -> Path:
    """``y = float(uint8(x * scale))``: a graph ONNX Runtime and OpenVINO answer differently.

    A float-to-uint8 Cast of an out-of-range value wraps around in ONNX Runtime (300.7 -> 44)
    and saturates in OpenVINO (-> 255; negative values -> 0), measured with ONNX Runtime 1.32 and
    OpenVINO 2026.4 on CPU. With standard-normal inputs most values are out of range, so an export
    measures OpenVINO out of budget on it: the tests' model for routes a provider must not serve.
    """
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["scaled"]),
            helper.make_node("Cast", ["scaled"], ["wrapped"], to=TensorProto.UINT8),
            helper.make_node("Cast", ["wrapped"], ["y"], to=TensorProto.FLOAT),
        ],
        "saturating_cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    return _save(graph, path)


def build_string_concat(path) -> Path:
    """``y = x + x`` on strings (StringConcat, opset 20): a model that shows what text really reaches it."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("StringConcat", ["x", "x"], ["y"])],
        "string_concat",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch"])],
    )
    return _save(graph, path, opset=20)


def build_bag_of_words(path, seed: int = 0, vocab: int = 100, embed: int = 16, classes: int = 3,
                       max_positions: int = 0, masked: bool = True, token_logits: bool = False) -> Path:
    """Mean of token (plus position) embeddings under the attention mask, then a linear classifier.

    ``masked=False`` averages over every position, ignoring the mask (padding then changes
    the answer); ``token_logits`` adds a per-token output ``token_logits [batch, sequence, classes]``.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, embed)).astype(np.float32)
    weight = rng.standard_normal((embed, classes)).astype(np.float32) / np.sqrt(embed)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb" if not max_positions else "token_emb"]),  # [b, s, e]
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
    if max_positions:
        positions = rng.standard_normal((max_positions, embed)).astype(np.float32) * 0.1
        initializers += [numpy_helper.from_array(positions, "position_embeddings"),
                         numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
                         numpy_helper.from_array(np.array(1, dtype=np.int64), "one_step")]
        nodes[:0] = [
            helper.make_node("Shape", ["input_ids"], ["ids_shape"], start=1, end=2),
            helper.make_node("Squeeze", ["ids_shape"], ["seq_len"]),
            helper.make_node("Range", ["zero", "seq_len", "one_step"], ["position_ids"]),
            # Gather clamps nothing: a sequence longer than the table fails in the runtime.
            helper.make_node("Gather", ["position_embeddings", "position_ids"], ["pos_emb"]),  # [s, e]
        ]
        nodes.insert(5, helper.make_node("Add", ["token_emb", "pos_emb"], ["emb"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])]
    if not masked:
        # The mask is still an input (and multiplies the tokens) but the mean divides by every position.
        nodes = [n for n in nodes if n.output[0] not in ("summed", "count", "count_safe", "pooled")]
        nodes.insert(-1, helper.make_node("ReduceMean", ["masked"], ["pooled"], axes=[1], keepdims=0))
    if token_logits:
        nodes.append(helper.make_node("MatMul", ["emb", "weight"], ["token_logits"]))
        outputs.append(helper.make_tensor_value_info("token_logits", TensorProto.FLOAT, ["batch", "sequence", classes]))
    graph = helper.make_graph(
        nodes,
        "bag_of_words",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        outputs,
        initializers,
    )
    return _save(graph, path)


def build_conv_net(path, seed: int = 0, size: int = 32, classes: int = 5) -> Path:
    """Conv(3→8, 3×3, stride 2) → Relu → Conv(8→8, 3×3, stride 2) → Relu → Flatten → dense for ``size``² images."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    side = ((size - 3) // 2 + 1 - 3) // 2 + 1  # 32 → 15 → 7
    k1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / np.sqrt(27)
    k2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) / np.sqrt(72)
    dense = rng.standard_normal((8 * side * side, classes)).astype(np.float32) / np.sqrt(8 * side * side)
    nodes = [
        helper.make_node("Conv", ["image", "k1"], ["c1"], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "k2"], ["c2"], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(a, n) for a, n in ((k1, "k1"), (k2, "k2"), (dense, "dense"))],
    )
    return _save(graph, path)


def build_float_ids(path, seed: int = 0, vocab: int = 41, embed: int = 8, window: int = 37) -> Path:
    """Character ids stored as floats, read in windows of ``window`` (Cast → Gather → Reshape → mean).

    The sequence dim is symbolic in the graph but only ``window`` runs (the reshape to
    (-1, window, embed)), like a model exported with dynamic axes for a fixed input length:
    inputs generated at the default length fail, inputs generated like a user's file of such
    windows (exporters/inputs.py InputProfile) run.
    """
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(seed).standard_normal((vocab, embed)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["chars"], ["ids"], to=TensorProto.INT64),
         helper.make_node("Gather", ["table", "ids"], ["embedded"], axis=0),
         helper.make_node("Reshape", ["embedded", "windows"], ["windowed"]),
         helper.make_node("ReduceMean", ["windowed"], ["y"], axes=[1], keepdims=0)],
        "float_ids", [helper.make_tensor_value_info("chars", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", embed])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([-1, window, embed], np.int64), "windows")])
    return _save(graph, path, opset=13)


BUILDERS = {"mlp": build_mlp, "static_mlp": build_static_mlp, "identity": build_identity, "bag_of_words": build_bag_of_words,
            "conv_net": build_conv_net}
