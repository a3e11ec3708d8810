"""Export a local Hugging Face model folder to ONNX with PyTorch, and compute golden outputs with it.

The traced graph is wrapped so that it returns plain named tensors. A
sentence-transformers folder (modules.json with mean pooling) also gets a
``sentence_embedding`` output, pooled and normalized the way sentence-transformers does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.sources import TASKS, Source

DEFAULT_IMAGE_SIZE = 224


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


class HuggingFaceModel:
    """A loaded model plus the names and dynamic axes of what it exports."""

    def __init__(self, source: Source):
        import torch
        import transformers

        self.source = source
        auto_name, outputs, self.logits_outputs = TASKS[source.task]
        auto = getattr(transformers, auto_name)
        try:
            # eager attention traces to plain MatMul/Softmax, which every runtime and quantizer handles.
            model = auto.from_pretrained(str(source.path), local_files_only=True, attn_implementation="eager")
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot load {source.path} as {auto_name} for task {source.task}: {str(exc).splitlines()[0]}") from None
        self.model = model.eval().float()
        self.config = model.config
        self.is_image = source.task == "image-classification"
        self.mean_pool, self.normalize = (False, False)
        if source.task == "feature-extraction":
            self.mean_pool, self.normalize = _sentence_transformers_pooling(source.path)
        self.output_names: List[str] = list(outputs) + (["sentence_embedding"] if self.mean_pool else [])
        if self.is_image:
            self.input_names = ["pixel_values"]
        else:
            self.input_names = ["input_ids", "attention_mask"]
        self._wrapper = self._make_wrapper(torch)

    def tokenized_corpus(self):
        """The built-in corpus through the folder's tokenizer, or None when it has none."""
        if self.is_image:
            return None
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.source.path), local_files_only=True)
        except Exception:  # no tokenizer files, or ones this transformers cannot read: random ids instead
            return None
        from portable_ep.exporters.inputs import tokenize_corpus

        return tokenize_corpus(tokenizer)

    @property
    def vocab_size(self):
        return getattr(self.config, "vocab_size", None)

    @property
    def image_size(self) -> int:
        size = getattr(self.config, "image_size", DEFAULT_IMAGE_SIZE)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def num_channels(self) -> int:
        return int(getattr(self.config, "num_channels", 3))

    def _make_wrapper(self, torch):
        outer = self

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = outer.model

            def forward(self, *inputs):
                out = self.inner(**dict(zip(outer.input_names, inputs)))
                first = out[outer.output_names[0]]
                if not outer.mean_pool:
                    return (first,)
                mask = inputs[1].unsqueeze(-1).to(first.dtype)
                pooled = (first * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if outer.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                return first, pooled

        return Wrapper().eval()

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        axes: Dict[str, Dict[int, str]] = {}
        for name in self.input_names:
            axes[name] = {0: "batch"} if self.is_image else {0: "batch", 1: "sequence"}
        for name in self.output_names:
            axes[name] = {0: "batch", 1: "sequence"} if name == "last_hidden_state" else {0: "batch"}
        return axes

    def example_inputs(self, sequence: int = 8):
        import torch

        if self.is_image:
            return (torch.zeros(2, self.num_channels, self.image_size, self.image_size),)
        ids = torch.ones(2, sequence, dtype=torch.int64)
        return ids, torch.ones_like(ids)

    def export_onnx(self, path: Path, opset: int) -> None:
        import torch

        with torch.no_grad():
            torch.onnx.export(
                self._wrapper, self.example_inputs(), str(path), input_names=self.input_names,
                output_names=self.output_names, dynamic_axes=self.dynamic_axes(), opset_version=opset,
                dynamo=False,
            )

    def run(self, feeds: Dict[str, np.ndarray], batch: int = 16) -> Dict[str, np.ndarray]:
        """Golden outputs from PyTorch, fp32, in chunks of ``batch`` rows."""
        import torch

        rows = len(next(iter(feeds.values())))
        chunks: Dict[str, list] = {name: [] for name in self.output_names}
        with torch.no_grad():
            for start in range(0, rows, batch):
                args = [torch.from_numpy(np.ascontiguousarray(feeds[name][start:start + batch])) for name in self.input_names]
                for name, value in zip(self.output_names, self._wrapper(*args)):
                    chunks[name].append(value.numpy())
        return {name: np.concatenate(parts) for name, parts in chunks.items()}
