"""Inputs for calibration and the golden reference: a user's .npz, checked, or generated.

Generated inputs respect the signature: token ids within the vocabulary, attention
masks of ones, token type ids of zeros, images from a standard normal, all from a
fixed seed so the same export gives the same bundle. When the model folder has a
tokenizer, token ids are real text instead of random ids: sentences from a small
built-in corpus (data/sentences.txt), packed to the sequence length between the
tokenizer's start and end tokens. Random ids put a transformer's activations far
from where real text puts them, and int8 calibrated on them suffers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.signature import Signature, concrete_shape, symbolic_sizes

Feeds = Dict[str, np.ndarray]


CORPUS = Path(__file__).with_name("data") / "sentences.txt"


@dataclass(frozen=True)
class TokenizedText:
    """The built-in corpus as token ids, plus the tokens that open and close a sequence."""

    sentences: Sequence[Sequence[int]]
    start: Optional[int] = None
    end: Optional[int] = None

    def packed(self, rng, samples: int, length: int) -> np.ndarray:
        body = length - (self.start is not None) - (self.end is not None)
        out = np.empty((samples, length), dtype=np.int64)
        for row in range(samples):
            ids: List[int] = []
            while len(ids) < body:
                ids.extend(self.sentences[int(rng.integers(len(self.sentences)))])
            ids = ([self.start] if self.start is not None else []) + ids[:max(body, 0)] + ([self.end] if self.end is not None else [])
            out[row] = ids[:length]
        return out


def tokenize_corpus(tokenizer) -> Optional[TokenizedText]:
    lines = [line.strip() for line in CORPUS.read_text().splitlines() if line.strip()]
    sentences = [ids for ids in (tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines) if ids]
    if not sentences:
        return None
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return TokenizedText(sentences, start, end)


def _int_kind(name: str) -> str:
    lowered = name.lower()
    if "mask" in lowered:
        return "mask"
    if "type" in lowered or "segment" in lowered:
        return "zeros"
    return "ids"


def generate_inputs(
    signature: Signature,
    samples: int,
    *,
    seed: int = 0,
    sequence_length: int = 128,
    vocab_sizes: Optional[Mapping[str, int]] = None,
    text: Optional[TokenizedText] = None,
) -> Feeds:
    rng = np.random.default_rng(seed)
    sizes = symbolic_sizes(signature, samples, {"*": sequence_length})
    vocab_sizes = vocab_sizes or {}
    feeds: Feeds = {}
    for spec in signature.inputs:
        shape = concrete_shape(spec.shape, sizes)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif spec.dtype.kind in "iu":
            kind = _int_kind(spec.name)
            if kind == "mask":
                feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
            elif kind == "zeros":
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
            elif text is not None and len(shape) == 2:
                feeds[spec.name] = text.packed(rng, shape[0], shape[1]).astype(spec.dtype)
            elif spec.name in vocab_sizes:
                # 0 is usually padding; real token ids start above it.
                feeds[spec.name] = rng.integers(1, vocab_sizes[spec.name], size=shape).astype(spec.dtype)
            else:
                raise ExportError(
                    f"cannot generate values for integer input {spec.name!r} (no vocabulary size found in the model); "
                    "pass --calibration FILE.npz with real inputs"
                )
        else:
            raise ExportError(f"cannot generate values for input {spec.name!r} of dtype {spec.dtype}; pass --calibration FILE.npz")
    return feeds


def vocab_sizes_from_onnx(model_or_path, signature: Signature) -> Dict[str, int]:
    """An integer input that indexes an embedding table (Gather) gets that table's row count."""
    model = model_or_path
    if not hasattr(model, "graph"):
        import onnx

        model = onnx.load(str(model_or_path), load_external_data=False)
    tables = {init.name: list(init.dims) for init in model.graph.initializer}
    int_inputs = {s.name for s in signature.inputs if s.dtype.kind in "iu"}
    sizes: Dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in int_inputs and node.input[0] in tables:
            sizes[node.input[1]] = int(tables[node.input[0]][0])
    return sizes


def check_inputs(feeds: Mapping[str, np.ndarray], signature: Signature, what: str, vocab_sizes=None) -> None:
    """Raise one ExportError line naming the first way ``feeds`` does not fit the signature."""
    vocab_sizes = vocab_sizes or {}
    expected = [spec.name for spec in signature.inputs]
    missing = [name for name in expected if name not in feeds]
    if missing:
        raise ExportError(f"{what} lacks input(s) {', '.join(missing)}; the model takes {', '.join(expected)}")
    unknown = sorted(set(feeds) - set(expected))
    if unknown:
        raise ExportError(f"{what} has array(s) {', '.join(unknown)} the model does not take; it takes {', '.join(expected)}")
    bound: Dict[str, int] = {}
    for spec in signature.inputs:
        array = feeds[spec.name]
        if array.dtype != spec.dtype:
            raise ExportError(f"{what}: {spec.name!r} is {array.dtype}, the model takes {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise ExportError(f"{what}: {spec.name!r} has shape {array.shape}, the model takes {len(spec.shape)} dims {list(spec.shape)}")
        for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
            if isinstance(dim, int) and dim != size:
                raise ExportError(f"{what}: {spec.name!r} has shape {array.shape}, dim {axis} must be {dim} (model shape {list(spec.shape)})")
            if isinstance(dim, str):
                if bound.setdefault(dim, size) != size:
                    raise ExportError(f"{what}: {spec.name!r} has {dim}={size} but another input has {dim}={bound[dim]}")
        if array.shape and array.shape[0] == 0:
            raise ExportError(f"{what}: {spec.name!r} has no samples")
        vocab = vocab_sizes.get(spec.name)
        if vocab and array.size and (array.min() < 0 or array.max() >= vocab):
            raise ExportError(
                f"{what}: {spec.name!r} holds token ids {int(array.min())}..{int(array.max())}, outside the vocabulary 0..{vocab - 1}"
            )


def load_inputs(path, signature: Signature, vocab_sizes=None) -> Feeds:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"calibration file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ExportError(f"calibration file {path} is not a readable .npz of arrays ({exc})") from None
    check_inputs(feeds, signature, f"calibration file {path}", vocab_sizes)
    return feeds


def take(feeds: Mapping[str, np.ndarray], start: int, stop: int) -> Feeds:
    return {name: array[start:stop] for name, array in feeds.items()}


def rows(feeds: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))
