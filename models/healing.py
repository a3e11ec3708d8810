"""Bundles and a repository for the self-healing tests and the soak benchmark (benchmarks/soak.py).

- ``bow``: a bag-of-words text classifier with a 64-row position table and 100 token ids,
  exported as a user would: the manifest records its vocabulary and longest sequence;
- ``conv``: a CNN whose dense layer fits 32×32 images only; any other size fails inside
  the runtime, the way a real detector fails on an image smaller than its stride.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from portable_ep.exporters.bundle import ExportOptions, export_bundle
from portable_ep.exporters.repository import RepoOptions, add_to_repository
from portable_ep.models.tiny import build_bag_of_words, build_conv_net

VOCAB = 100
MAX_POSITIONS = 64
IMAGE = (3, 32, 32)

# name: (bundle, provider chain, extra config.pbtxt parameters)
HEALING_MODELS = {
    "bow_cpu": ("bow", "cpu", {"request.max_elements": "300"}),
    "bow_openvino": ("bow", "openvino", {}),
    # Checks switched off, so that bad requests reach the runtime and fail there.
    "bow_cpu_unchecked": ("bow", "cpu", {"request.check_token_ids": "false", "request.max_dim.sequence": "0"}),
    "conv_cpu": ("conv", "cpu", {"request.max_bytes": str(1 << 20)}),
    "conv_openvino": ("conv", "openvino", {}),
}


def export_healing_bundles(root: Path) -> Dict[str, Path]:
    quiet = dict(progress=False, formats=("onnx", "openvino"), precisions=("fp32", "int8"))
    bow = build_bag_of_words(root / "bow.onnx", seed=3, vocab=VOCAB, max_positions=MAX_POSITIONS)
    conv = build_conv_net(root / "conv.onnx", seed=4)
    return {
        "bow": export_bundle(bow, root / "bundles" / "bow", ExportOptions(**quiet)).bundle,
        "conv": export_bundle(conv, root / "bundles" / "conv", ExportOptions(input_shapes={"image": (1, *IMAGE)}, **quiet)).bundle,
    }


def write_healing_repository(root: Path, bundles: Dict[str, Path], models=None) -> Path:
    repository = root / "repository"
    for name, (bundle, chain, parameters) in (models or HEALING_MODELS).items():
        add_to_repository(bundles[bundle], repository, name,
                          RepoOptions(providers=chain, parameters=parameters, dynamic_batching_delay_us=2000))
    return repository


def bow_request(batch: int, sequence: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, sequence), np.int64)
    mask[:, max(1, sequence - seed % 3):] = 0
    return {"input_ids": rng.integers(0, VOCAB, (batch, sequence), dtype=np.int64), "attention_mask": mask}


def conv_request(batch: int, seed: int, size: int = 32) -> dict:
    return {"image": np.random.default_rng(seed).random((batch, IMAGE[0], size, size), dtype=np.float32)}


class Reference:
    """The bundles' fp32 ONNX models run in-process by ONNX Runtime: what every served answer must match."""

    def __init__(self, bundles: Dict[str, Path]):
        import onnxruntime as ort

        self.sessions = {name: ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
                         for name, path in bundles.items()}

    def __call__(self, bundle: str, feeds: dict) -> np.ndarray:
        return self.sessions[bundle].run(["logits"], feeds)[0]


def bundle_of(model: str) -> str:
    return HEALING_MODELS[model][0]


def bad_request(kind: str, rng) -> tuple:
    """(model, feeds) of one kind of bad request, for the soak's mix; each must be refused alone."""
    ids = rng.integers(0, VOCAB, (1, 8), dtype=np.int64)
    mask = np.ones((1, 8), np.int64)
    if kind == "negative token id":
        return "bow_cpu", {"input_ids": -1 - ids, "attention_mask": mask}
    if kind == "token id past the vocabulary":
        return "bow_openvino", {"input_ids": ids + VOCAB, "attention_mask": mask}
    if kind == "sequence past the position table":
        long = np.ones((1, MAX_POSITIONS + 5), np.int64)
        return "bow_openvino", {"input_ids": long, "attention_mask": long}
    if kind == "inputs disagree on the sequence":
        return "bow_cpu", {"input_ids": ids, "attention_mask": np.ones((1, 9), np.int64)}
    if kind == "NaN in an image":
        image = conv_request(1, 0)["image"]
        image[0, 0, 0, 0] = np.nan
        return "conv_openvino", {"image": image}
    if kind == "image smaller than the stride (runtime)":
        return "conv_openvino", {"image": np.ones((1, 3, 2, 2), np.float32)}
    if kind == "image of another size (runtime)":
        return "conv_cpu", {"image": np.ones((1, 3, 40, 40), np.float32)}
    if kind == "int32 for an int64 input":
        return "bow_openvino", {"input_ids": ids.astype(np.int32), "attention_mask": mask}
    raise KeyError(kind)


BAD_KINDS = (
    "negative token id", "token id past the vocabulary", "sequence past the position table",
    "inputs disagree on the sequence", "NaN in an image", "image smaller than the stride (runtime)",
    "image of another size (runtime)", "int32 for an int64 input",
)
