"""A local Hugging Face model folder as export sees it: ONNX through optimum, golden outputs from PyTorch.

optimum's exporter (exporters/optimum_export.py) decides, per architecture and task, the
inputs, outputs and dynamic axes. A sentence-transformers folder that mean-pools also gets
a ``sentence_embedding`` output, appended to the graph as ONNX ops (masked mean, then L2
normalization when the folder normalizes) and computed the same way from PyTorch's
hidden states for the golden outputs, as sentence-transformers does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.sources import Source

EMBEDDING = "sentence_embedding"


def _sentence_transformers_pooling(folder: Path) -> Tuple[bool, bool]:
    """(mean pooling, normalize) when the folder is a sentence-transformers model that mean-pools."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return False, False
    try:
        modules = json.loads(modules_path.read_text())
        types = [m.get("type", "") for m in modules]
        pooling = next(m for m in modules if m.get("type", "").endswith("Pooling"))
        pooling_config = json.loads((folder / pooling["path"] / "config.json").read_text())
    except (StopIteration, OSError, ValueError, KeyError, AttributeError):
        return False, False
    mean = bool(pooling_config.get("pooling_mode_mean_tokens"))
    return mean, mean and any(t.endswith("Normalize") for t in types)


def append_mean_pooling(path: Path, hidden: str, mask: str, normalize: bool) -> None:
    """Add ``sentence_embedding`` = masked mean of ``hidden`` over axis 1 (then L2-normalized) to the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.array([1], dtype=np.int64), "pool_axis1"),
                              numpy_helper.from_array(np.array([-1], dtype=np.int64), "pool_axis_last"),
                              numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "pool_eps")])
    nodes = [
        helper.make_node("Cast", [mask], ["pool_mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pool_mask_f", "pool_axis_last"], ["pool_mask"]),
        helper.make_node("Mul", [hidden, "pool_mask"], ["pool_masked"]),
        helper.make_node("ReduceSum", ["pool_masked", "pool_axis1"], ["pool_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["pool_mask", "pool_axis1"], ["pool_count_raw"], keepdims=0),
        helper.make_node("Max", ["pool_count_raw", "pool_eps"], ["pool_count"]),
        helper.make_node("Div", ["pool_sum", "pool_count"], ["pool_mean" if normalize else EMBEDDING]),
    ]
    if normalize:
        nodes.append(helper.make_node("LpNormalization", ["pool_mean"], [EMBEDDING], axis=1, p=2))
    graph.node.extend(nodes)
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch_size"
    width = next(o for o in graph.output if o.name == hidden).type.tensor_type.shape.dim[2]
    graph.output.append(helper.make_tensor_value_info(
        EMBEDDING, TensorProto.FLOAT, [batch, width.dim_value if width.HasField("dim_value") else width.dim_param]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden.astype(np.float64) * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)


class HuggingFaceModel:
    """The folder, its task, and what its ONNX export takes and gives (set by export_onnx)."""

    def __init__(self, source: Source):
        self.source = source
        self.task = source.task
        self.config = source.config
        self.mean_pool, self.normalize = (False, False)
        if self.task == "feature-extraction":
            self.mean_pool, self.normalize = _sentence_transformers_pooling(source.path)
        self.input_names: List[str] = []
        self.output_names: List[str] = []
        self.logits_outputs: Tuple[str, ...] = ()
        self.dim_sizes: Dict[str, int] = {}
        self.input_hints: Dict[str, str] = {}

    def export_onnx(self, path: Path, opset: int) -> None:
        from portable_ep.exporters.optimum_export import export_onnx

        exported = export_onnx(self.source.path, self.task, path, opset=opset)
        self.input_names, self.output_names = list(exported.input_names), list(exported.output_names)
        self.logits_outputs = tuple(exported.logits_outputs)
        self.dim_sizes = dict(exported.dim_sizes)
        if self.task == "audio-classification":
            self.input_hints = {name: "audio" for name in self.input_names if name == "input_values"}
        if self.mean_pool and "last_hidden_state" in self.output_names and "attention_mask" in self.input_names:
            append_mean_pooling(Path(path), "last_hidden_state", "attention_mask", self.normalize)
            self.output_names.append(EMBEDDING)

    def _tokenizer(self):
        """The folder's tokenizer for a model that takes token ids, or None (none, or one transformers cannot read)."""
        if "input_ids" not in self.input_names:
            return None
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(self.source.path), local_files_only=True)
        except Exception:  # no tokenizer files, or ones this transformers cannot read
            return None

    def tokenized_corpus(self):
        """The built-in corpus through the folder's tokenizer, or None when it has none (random ids instead)."""
        tokenizer = self._tokenizer()
        if tokenizer is None:
            return None
        from portable_ep.exporters.inputs import tokenize_corpus

        return tokenize_corpus(tokenizer)

    def save_tokenizer(self, folder: Path) -> bool:
        """Write the tokenizer (its fast ``tokenizer.json`` form) into ``folder``; False when there is none.

        Serving text needs it: the OpenAI-compatible ``/v1/embeddings`` tokenizes its input with
        the bundle's own tokenizer, so a bundle carries it rather than pointing at its source.
        """
        tokenizer = self._tokenizer()
        if tokenizer is None or not getattr(tokenizer, "is_fast", False):
            return False
        tokenizer.save_pretrained(str(folder))
        return (Path(folder) / "tokenizer.json").is_file()

    @property
    def vocab_size(self):
        return self.config.get("vocab_size")

    def run(self, feeds: Dict[str, np.ndarray], batch: int = 16) -> Dict[str, np.ndarray]:
        """Golden outputs from PyTorch, fp32."""
        from portable_ep.exporters.optimum_export import pytorch_outputs

        names = [n for n in self.output_names if n != EMBEDDING]
        try:
            outputs = pytorch_outputs(self.source.path, self.task, feeds, names, batch=batch)
        except ExportError:
            raise
        except Exception as exc:
            from portable_ep.exporters.errors import one_line

            raise ExportError(f"PyTorch cannot run {self.source.path} on the reference inputs: {one_line(exc)}") from None
        if EMBEDDING in self.output_names:
            outputs[EMBEDDING] = mean_pool(outputs["last_hidden_state"], feeds["attention_mask"], self.normalize)
        return outputs
