"""Inputs for calibration and the golden reference: a user's .npz, checked, or generated.

Generated inputs respect the signature: token ids within the vocabulary, attention
masks of ones, token type ids of zeros, image-like inputs as synthetic natural images
and audio as speech-like waveforms (exporters/synthetic.py), other floats from a
standard normal, all from a fixed seed so the same export gives the same bundle. When the model folder has a
tokenizer, token ids are real text instead of random ids: sentences from a small
built-in corpus (data/sentences.txt), packed to the sequence length between the
tokenizer's start and end tokens. Random ids put a transformer's activations far
from where real text puts them, and int8 calibrated on them suffers.

When the user gave a calibration or golden file, what is generated follows it
(``InputProfile``, recorded in the manifest's ``generation.profiles`` so that
``portable-ep check`` generates the same way): each input takes the file's per-sample
shape (a 1,760-sample audio window stays 1,760 long, a batch-1 graph gets batch 1),
its value range, and its integrality (character ids stored as floats stay whole numbers
within the ids seen).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

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


@dataclass(frozen=True)
class InputProfile:
    """What one input of a user's file looks like, for generating more of its kind."""

    shape: Tuple[int, ...]  # one sample's shape: the arrays' shape without the leading sample axis
    low: float
    high: float
    integral: bool  # every value a whole number (ids, counts, class indices), whatever the dtype
    mean: float
    std: float

    def as_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, entry: Mapping) -> "InputProfile":
        return cls(tuple(int(d) for d in entry["shape"]), float(entry["low"]), float(entry["high"]),
                   bool(entry["integral"]), float(entry.get("mean", 0.0)), float(entry.get("std", 1.0)))


def profiles_of(feeds: Mapping[str, np.ndarray]) -> Dict[str, InputProfile]:
    """The profile of each array of a user's inputs file (in the samples layout, exporters/samples.py)."""
    profiles = {}
    for name, array in feeds.items():
        array = np.asarray(array)
        if array.ndim == 0 or array.size == 0 or array.dtype.kind not in "biuf":
            continue
        values = array.astype(np.float64)
        finite = values[np.isfinite(values)]
        if not finite.size:
            continue
        profiles[name] = InputProfile(tuple(int(d) for d in array.shape[1:]), float(finite.min()), float(finite.max()),
                                      bool(np.all(finite == np.round(finite))), float(finite.mean()), float(finite.std()))
    return profiles


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
    profiles: Optional[Mapping[str, object]] = None,
) -> Feeds:
    """``samples`` generated samples in the layout of ``signature`` (see exporters/samples.py).

    Symbolic dims take ``dim_sizes`` by name, image height/width 224, others ``sequence_length``;
    ``shapes`` fixes an input's whole model shape (``--input-shape``); ``profiles`` (InputProfile
    or its dict, by input name, from a user's file) give an input its per-sample shape, value
    range and integrality. ``origins`` is filled with what each input was made of.
    """
    rng = np.random.default_rng(seed)
    vocab_sizes = vocab_sizes or {}
    hints = hints or {}
    shapes = shapes or {}
    profiles = {name: p if isinstance(p, InputProfile) else InputProfile.from_dict(p) for name, p in (profiles or {}).items()}
    batched = signature.batched
    sizes = _sizes(signature, samples if batched else 1, sequence_length, dim_sizes or {}, shapes, profiles)
    feeds: Feeds = {}
    for spec in signature.inputs:
        model_shape = concrete_shape(spec.shape, sizes)
        profile = profiles.get(spec.name)
        if spec.name in shapes:
            model_shape = tuple(int(d) for d in shapes[spec.name])
            if batched:
                model_shape = (samples,) + model_shape[1:]
        elif profile is not None and len(profile.shape) == len(spec.shape) - (1 if batched else 0):
            model_shape = ((samples,) if batched else ()) + profile.shape
        full = model_shape if batched else (samples,) + tuple(model_shape)
        kind = value_kind(spec, model_shape, batched=batched, vocab_sizes=vocab_sizes, text=text, hints=hints)
        if profile is not None:
            kind = _profiled_kind(kind, spec, profile)
            if origins is not None:
                origins[spec.name] = f"{ORIGINS[kind]}, shaped and ranged like your file ({profile.low:g}..{profile.high:g})"
            feeds[spec.name] = _profiled_values(kind, spec, full, rng, vocab_sizes, text, profile)
            continue
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
           shapes: Mapping[str, Sequence[int]], profiles: Mapping[str, InputProfile] = None) -> Dict[str, int]:
    overrides: Dict[str, int] = {"*": sequence_length, **dim_sizes}
    lead = 1 if signature.batched else 0
    for spec in signature.inputs:
        # The user's file says how long each symbolic dim is (a window, a sequence, a batch of 1).
        profile = (profiles or {}).get(spec.name)
        if profile is not None and len(profile.shape) == len(spec.shape) - lead:
            for dim, size in zip(spec.shape[lead:], profile.shape):
                if isinstance(dim, str):
                    overrides[dim] = int(size)
    if not signature.batched:
        # A model that cannot batch runs one sample per call: a symbolic leading dim of a rank >= 2
        # input ("batch", "N", unnamed) is that one sample, not a sequence of 128.
        for spec in signature.inputs:
            if len(spec.shape) >= 2 and isinstance(spec.shape[0], str):
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


def _profiled_kind(kind: str, spec, profile: InputProfile) -> str:
    """The generator for an input the user's file profiles: whole numbers stay whole numbers."""
    if profile.low == profile.high:
        return "constant"
    if kind == "text" or (kind in ("ones", "zeros") and profile.low <= (kind == "ones") <= profile.high):
        return kind  # real text for token ids; masks of ones, type ids of zeros where the file holds such values
    if profile.integral or spec.dtype.kind in "iub":
        return "range"
    return kind if kind in ("image", "audio") else "normal"


ORIGINS.update({"constant": "the one value your file holds", "range": "whole numbers within the range your file holds"})


def _profiled_values(kind: str, spec, shape, rng, vocab_sizes, text, profile: InputProfile) -> np.ndarray:
    low, high = profile.low, profile.high
    if kind == "constant":
        return np.full(shape, low).astype(spec.dtype)
    if kind in ("text", "ones", "zeros"):
        return _values(kind, spec, shape, rng, vocab_sizes, text)
    if kind == "range":
        top = int(np.floor(high))
        if spec.name in vocab_sizes:
            top = min(top, int(vocab_sizes[spec.name]) - 1)
        return rng.integers(int(np.ceil(low)), max(top, int(np.ceil(low))) + 1, size=shape).astype(spec.dtype)
    values = _values(kind, spec, shape, rng, vocab_sizes, text).astype(np.float64)
    if kind == "normal":
        values = profile.mean + profile.std * values
    else:  # images in [0, 1], audio about [-0.5, 0.5]: moved onto the file's range
        lo, hi = float(values.min()), float(values.max())
        values = low + (values - lo) * ((high - low) / (hi - lo) if hi > lo else 0.0)
    return np.clip(values, low, high).astype(spec.dtype)


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
