"""Inputs for calibration and the golden reference: a user's .npz, checked, or generated.

Generated inputs respect the signature: token ids within the vocabulary, attention
masks of ones, token type ids of zeros, image-like inputs as synthetic natural images
and audio as speech-like waveforms (exporters/synthetic.py), other floats from a
standard normal, all from a fixed seed so the same export gives the same bundle. When the model folder has a
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

from portable_ep.backends.dtypes import restore_bfloat16
from portable_ep.exporters import synthetic
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


AUDIO_NAMES = ("input_values", "audio", "waveform", "wav", "pcm", "speech")


def value_kind(spec, model_shape, *, batched: bool, vocab_sizes: Mapping[str, int], text, hints: Mapping[str, str]) -> str:
    """What generated values an input gets: image, audio, normal, ones, zeros, text, ids; '' when none fits."""
    if spec.name in hints:
        return hints[spec.name]
    if spec.dtype.kind == "f" or spec.dtype.name == "bfloat16":  # ml_dtypes.bfloat16 is numpy kind "V"
        if synthetic.is_image_shape(model_shape if batched else (1,) + tuple(model_shape)[-3:]):
            return "image"
        if any(word in spec.name.lower() for word in AUDIO_NAMES):
            return "audio"
        return "normal"
    if spec.dtype.kind == "b":
        return "ones"
    if spec.dtype.kind in "iu":
        kind = _int_kind(spec.name)
        if kind == "mask":
            return "ones"
        if kind == "zeros":
            return "zeros"
        if text is not None and batched and len(model_shape) == 2:
            return "text"
        return "ids" if spec.name in vocab_sizes else ""
    return ""


ORIGINS = {
    "image": "synthetic natural images (smooth colour fields, shapes and text), in [0, 1]",
    "audio": "synthetic speech-like audio at 16 kHz",
    "normal": "standard normal",
    "ones": "ones",
    "zeros": "zeros",
    "text": "built-in English text through the model's tokenizer",
    "ids": "random token ids within the vocabulary",
}


def layout_text(signature: Signature, sizes_hint: str = "N") -> str:
    """The arrays a user's .npz must hold for ``signature``, e.g. ``'x' float32 [N, 3, any, any]``."""
    parts = []
    for spec in signature.inputs:
        dims = list(spec.shape[1:]) if signature.batched else list(spec.shape)
        shown = [sizes_hint] + [str(d) if isinstance(d, int) else ("any" if d.startswith(f"{spec.name}_dim") else d) for d in dims]
        parts.append(f"{spec.name!r} {spec.dtype.name} [{', '.join(shown)}]")
    how = ("samples along the model's batch axis" if signature.batched
           else "this model runs one sample per call, so every array has a leading sample axis of N")
    return f"{', '.join(parts)} ({how})"


def generate_inputs(
    signature: Signature,
    samples: int,
    *,
    seed: int = 0,
    sequence_length: int = 128,
    vocab_sizes: Optional[Mapping[str, int]] = None,
    text: Optional[TokenizedText] = None,
    dim_sizes: Optional[Mapping[str, int]] = None,
    shapes: Optional[Mapping[str, Sequence[int]]] = None,
    hints: Optional[Mapping[str, str]] = None,
    origins: Optional[Dict[str, str]] = None,
) -> Feeds:
    """``samples`` generated samples in the layout of ``signature`` (see exporters/samples.py).

    Symbolic dims take ``dim_sizes`` by name, image height/width 224, others ``sequence_length``;
    ``shapes`` fixes an input's whole model shape (``--input-shape``). ``origins`` is filled with
    what each input was made of.
    """
    rng = np.random.default_rng(seed)
    vocab_sizes = vocab_sizes or {}
    hints = hints or {}
    batched = signature.batched
    sizes = _sizes(signature, samples if batched else 1, sequence_length, dim_sizes or {}, shapes or {})
    feeds: Feeds = {}
    for spec in signature.inputs:
        model_shape = concrete_shape(spec.shape, sizes)
        if spec.name in (shapes or {}):
            model_shape = tuple(int(d) for d in shapes[spec.name])
            if batched:
                model_shape = (samples,) + model_shape[1:]
        full = model_shape if batched else (samples,) + tuple(model_shape)
        kind = value_kind(spec, model_shape, batched=batched, vocab_sizes=vocab_sizes, text=text, hints=hints)
        if not kind:
            what = "integer input" if spec.dtype.kind in "iu" else f"input of dtype {spec.dtype}"
            why = " (no vocabulary size found in the model)" if spec.dtype.kind in "iu" else ""
            raise ExportError(
                f"cannot generate values for {what} {spec.name!r}{why}; pass --calibration FILE.npz "
                f"with real inputs: {layout_text(signature)}"
            )
        if origins is not None:
            origins[spec.name] = ORIGINS[kind]
        feeds[spec.name] = _values(kind, spec, full, rng, vocab_sizes, text)
    return feeds


def _sizes(signature: Signature, batch: int, sequence_length: int, dim_sizes: Mapping[str, int],
           shapes: Mapping[str, Sequence[int]]) -> Dict[str, int]:
    overrides: Dict[str, int] = {"*": sequence_length, **dim_sizes}
    if signature.batchable is False and Signature(signature.inputs, signature.outputs).batched:
        # Shapes that say "batch" on a model export found cannot batch: one sample is a batch of 1.
        for spec in signature.inputs:
            overrides.setdefault(spec.shape[0], 1)
    for spec in signature.inputs:
        # An input's --input-shape names the size of each of its symbolic dims.
        for dim, size in zip(spec.shape, shapes.get(spec.name, ())):
            if isinstance(dim, str):
                overrides[dim] = int(size)
        # Spatial dims of image-like inputs default to 224, not the sequence length; a symbolic
        # channel dim (optimum writes "num_channels") is RGB.
        if spec.dtype.kind == "f" and len(spec.shape) == 4:
            for axis in (1, 3):
                dim = spec.shape[axis]
                if isinstance(dim, str) and "channel" in dim.lower():
                    overrides.setdefault(dim, 3)
            guess = tuple(d if isinstance(d, int) else overrides.get(d, 224) if "channel" in d.lower() else 224
                          for d in spec.shape)
            layout = synthetic.is_image_shape(guess)
            axes = (2, 3) if layout == "nchw" else (1, 2) if layout == "nhwc" else ()
            for axis in axes:
                if isinstance(spec.shape[axis], str):
                    overrides.setdefault(spec.shape[axis], 224)
    return symbolic_sizes(signature, batch, overrides)


def _values(kind: str, spec, shape, rng, vocab_sizes, text) -> np.ndarray:
    if kind == "image":
        layout = synthetic.is_image_shape(tuple(shape)[-4:] if len(shape) >= 4 else (1,) + tuple(shape)[-3:])
        return synthetic.natural_images(rng, shape, channels_last=layout == "nhwc").astype(spec.dtype)
    if kind == "audio":
        return synthetic.waveforms(rng, shape).astype(spec.dtype)
    if kind == "normal":
        return rng.standard_normal(shape).astype(spec.dtype)
    if kind == "ones":
        return np.ones(shape, dtype=spec.dtype)
    if kind == "zeros":
        return np.zeros(shape, dtype=spec.dtype)
    if kind == "text":
        return text.packed(rng, shape[0], shape[1]).astype(spec.dtype)
    # 0 is usually padding; real token ids start above it.
    return rng.integers(1, vocab_sizes[spec.name], size=shape).astype(spec.dtype)


def vocab_sizes_from_onnx(model_or_path, signature: Signature) -> Dict[str, int]:
    """An integer input that indexes an embedding table (Gather) gets that table's row count."""
    from portable_ep.python_backend.request_limits import embedding_vocab_sizes

    model = model_or_path
    if not hasattr(model, "graph"):
        import onnx

        model = onnx.load(str(model_or_path), load_external_data=False)
    return embedding_vocab_sizes(model, [s.name for s in signature.inputs if s.dtype.kind in "iu"])


def check_inputs(feeds: Mapping[str, np.ndarray], signature: Signature, what: str, vocab_sizes=None) -> None:
    """Raise one ExportError line naming the first way ``feeds`` does not fit the signature's layout."""
    vocab_sizes = vocab_sizes or {}
    expected = [spec.name for spec in signature.inputs]
    missing = [name for name in expected if name not in feeds]
    layout = f"; write {layout_text(signature)}"
    if missing:
        raise ExportError(f"{what} lacks input(s) {', '.join(missing)}{layout}")
    unknown = sorted(set(feeds) - set(expected))
    if unknown:
        raise ExportError(f"{what} has array(s) {', '.join(unknown)} the model does not take; it takes {', '.join(expected)}")
    bound: Dict[str, int] = {}
    counts: Dict[str, int] = {}
    # An unbatched model's samples sit on a leading axis of their own (exporters/samples.py).
    lead = 0 if signature.batched else 1
    for spec in signature.inputs:
        array = feeds[spec.name]
        if array.dtype != spec.dtype:
            raise ExportError(f"{what}: {spec.name!r} is {array.dtype}, the model takes {spec.dtype}{layout}")
        if array.ndim != len(spec.shape) + lead:
            raise ExportError(f"{what}: {spec.name!r} has shape {array.shape}{layout}")
        for axis, (dim, size) in enumerate(zip(spec.shape, array.shape[lead:])):
            if isinstance(dim, int) and dim != size:
                raise ExportError(f"{what}: {spec.name!r} has shape {array.shape}, dim {axis + lead} must be {dim}{layout}")
            if isinstance(dim, str):
                if bound.setdefault(dim, size) != size:
                    raise ExportError(f"{what}: {spec.name!r} has {dim}={size} but another input has {dim}={bound[dim]}")
        if array.shape and array.shape[0] == 0 or array.ndim == 0:
            raise ExportError(f"{what}: {spec.name!r} has no samples{layout}")
        counts[spec.name] = array.shape[0]
        vocab = vocab_sizes.get(spec.name)
        if vocab and array.size and (array.min() < 0 or array.max() >= vocab):
            raise ExportError(
                f"{what}: {spec.name!r} holds token ids {int(array.min())}..{int(array.max())}, outside the vocabulary 0..{vocab - 1}"
            )
    if len(set(counts.values())) > 1:
        raise ExportError(f"{what}: the arrays hold different numbers of samples ({', '.join(f'{k}: {v}' for k, v in counts.items())})")


def load_inputs(path, signature: Signature, vocab_sizes=None, what: str = "calibration file") -> Feeds:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{what} {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {name: restore_bfloat16(data[name]) for name in data.files}  # bfloat16 is stored as 'V2'
    except (OSError, ValueError) as exc:
        raise ExportError(f"{what} {path} is not a readable .npz of arrays ({exc})") from None
    check_inputs(feeds, signature, f"{what} {path}", vocab_sizes)
    return feeds
