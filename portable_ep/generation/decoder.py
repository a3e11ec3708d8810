"""One forward pass of a decoder-only LLM with its KV cache, on any provider session.

The bundle's decoder is optimum's ``text-generation-with-past`` graph: inputs
``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.N.key|value``
([batch, kv_heads, past, head_dim]); outputs ``logits`` and ``present.N.key|value``
(the past with this step's keys appended). The cache therefore lives in numpy arrays
owned here, not inside a runtime, which is what lets every provider (ONNX Runtime
CPU/CUDA, OpenVINO) run the same loop and lets sequences join and leave a batch
between steps.

A batch of sequences of different lengths is kept left-padded: padded positions hold
zeros in the cache and 0 in the attention mask, and each row has its own position ids,
so a row's logits do not depend on its neighbours (the usual left-padding contract of
Hugging Face causal LMs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
REQUIRED_INPUTS = ("input_ids", "attention_mask")


class NotADecoder(ValueError):
    """The session is not a decoder with a KV cache in optimum's layout."""


@dataclass(frozen=True)
class CacheLayout:
    """Names and sizes of the KV cache tensors of one decoder graph."""

    past_names: Tuple[str, ...]  # input names, layer-major: (0.key, 0.value, 1.key, ...)
    present_names: Tuple[str, ...]  # the matching output names
    kv_heads: int
    head_dim: int
    dtype: np.dtype
    has_position_ids: bool

    @property
    def layers(self) -> int:
        return len(self.past_names) // 2

    def bytes_per_token(self) -> int:
        """Cache bytes one token of one sequence takes (keys and values of every layer)."""
        return len(self.past_names) * self.kv_heads * self.head_dim * self.dtype.itemsize


def cache_layout(session, kv_heads: Optional[int] = None, head_dim: Optional[int] = None) -> CacheLayout:
    """Read the cache layout from the session's inputs (sizes from the manifest when the runtime lost them)."""
    inputs = {t.name: t for t in session.inputs}
    outputs = {t.name for t in session.outputs}
    missing = [name for name in REQUIRED_INPUTS if name not in inputs]
    past = sorted((int(m.group(1)), m.group(2) == "value", name) for name in inputs if (m := PAST_RE.match(name)))
    if missing or not past or "logits" not in outputs:
        raise NotADecoder(
            "the model is not a decoder with a KV cache (expected inputs input_ids, attention_mask, "
            "past_key_values.N.key/value and output logits, as optimum's text-generation-with-past export writes); "
            f"it has inputs {', '.join(inputs) or 'none'}"
        )
    past_names = tuple(name for _, _, name in past)
    present_names = tuple(name.replace("past_key_values", "present") for name in past_names)
    absent = [name for name in present_names if name not in outputs]
    if absent:
        raise NotADecoder(f"the decoder has no output {absent[0]!r} for its cache input {past_names[0]!r}")
    shape = inputs[past_names[0]].shape
    if kv_heads is None and len(shape) == 4 and isinstance(shape[1], int):
        kv_heads = shape[1]
    if head_dim is None and len(shape) == 4 and isinstance(shape[3], int):
        head_dim = shape[3]
    if not kv_heads or not head_dim:
        raise NotADecoder(f"cache input {past_names[0]!r} has shape {shape}: kv heads and head size are not known")
    return CacheLayout(past_names, present_names, int(kv_heads), int(head_dim), np.dtype(inputs[past_names[0]].dtype),
                       "position_ids" in inputs)


class Decoder:
    """Forward passes of one decoder session; not thread-safe (one caller, like the session)."""

    def __init__(self, session, kv_heads: Optional[int] = None, head_dim: Optional[int] = None):
        self.session = session
        self.layout = cache_layout(session, kv_heads, head_dim)

    def empty_cache(self, batch: int = 1) -> Dict[str, np.ndarray]:
        shape = (batch, self.layout.kv_heads, 0, self.layout.head_dim)
        return {name: np.zeros(shape, self.layout.dtype) for name in self.layout.past_names}

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray,
                cache: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """Logits [batch, steps, vocab] and the grown cache (past names → arrays)."""
        feeds = {"input_ids": input_ids.astype(np.int64, copy=False),
                 "attention_mask": attention_mask.astype(np.int64, copy=False)}
        if self.layout.has_position_ids:
            feeds["position_ids"] = positions.astype(np.int64, copy=False)
        feeds.update(cache)
        outputs = self.session.run(feeds)
        grown = {past: outputs[present] for past, present in zip(self.layout.past_names, self.layout.present_names)}
        return outputs["logits"], grown

    def prefill(self, ids: Sequence[int]) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """One sequence's prompt in one pass: (logits [len, vocab], its cache)."""
        n = len(ids)
        logits, cache = self.forward(np.asarray([ids], np.int64), np.ones((1, n), np.int64),
                                     np.arange(n, dtype=np.int64)[None], self.empty_cache())
        return logits[0], cache

    def teacher_forced_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position of ``ids`` ([len, vocab], float32)."""
        return np.asarray(self.prefill(ids)[0], np.float32)

    def greedy(self, prompt_ids: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int] = ()) -> List[int]:
        """Greedy continuation (new tokens only), stopping after an end-of-sequence token."""
        batch = DecodeBatch(self)
        batch.add(prompt_ids)
        out: List[int] = []
        logits = batch.last_logits
        while len(out) < max_new_tokens:
            token = int(np.argmax(logits[0]))
            out.append(token)
            if token in eos_ids or len(out) == max_new_tokens:
                break
            logits = batch.step([token])
        return out


class DecodeBatch:
    """Sequences decoding together: one left-padded cache, one forward pass per step.

    ``add`` prefills a sequence alone (prompts are long, decode steps are one token) and
    pads it into the batch; ``step`` feeds one token per row; ``remove`` drops rows and
    trims padding no row needs any more. Rows are addressed by index, in insertion order.
    """

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.cache = decoder.empty_cache(0)
        self.mask = np.zeros((0, 0), np.int64)
        self.positions = np.zeros((0,), np.int64)
        #: Logits of each row's latest position, [rows, vocab].
        self.last_logits: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def cache_tokens(self) -> int:
        """Cached positions per row, padding included."""
        return self.mask.shape[1]

    def add(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Prefill one prompt and append it as the last row; returns its next-token logits."""
        logits, cache = self.decoder.prefill(prompt_ids)
        n = len(prompt_ids)
        width = max(n, self.cache_tokens)
        self.cache = {name: np.concatenate([_left_pad(self.cache[name], width), _left_pad(cache[name], width)])
                      for name in self.cache}
        self.mask = np.concatenate([_left_pad(self.mask, width), _left_pad(np.ones((1, n), np.int64), width)])
        self.positions = np.append(self.positions, n)
        row = np.asarray(logits[-1:], np.float32)
        self.last_logits = row if self.last_logits is None or len(self.last_logits) == 0 else np.concatenate([self.last_logits, row])
        return row[0]

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed one token per row; returns the next-token logits [rows, vocab]."""
        rows = len(self)
        mask = np.concatenate([self.mask, np.ones((rows, 1), np.int64)], axis=1)
        logits, self.cache = self.decoder.forward(np.asarray(tokens, np.int64).reshape(rows, 1), mask,
                                                  self.positions.reshape(rows, 1), self.cache)
        self.mask = mask
        self.positions = self.positions + 1
        self.last_logits = np.asarray(logits[:, -1, :], np.float32)
        return self.last_logits

    def remove(self, rows: Sequence[int]) -> None:
        if not rows:
            return
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(rows, np.int64))
        self.mask = self.mask[keep]
        self.positions = self.positions[keep]
        if self.last_logits is not None:
            self.last_logits = self.last_logits[keep]
        # Columns of padding in every remaining row are dead weight in each later step.
        used = np.flatnonzero(self.mask.any(axis=0))
        start = int(used[0]) if len(used) else self.mask.shape[1]
        self.mask = self.mask[:, start:]
        self.cache = {name: np.ascontiguousarray(value[keep][:, :, start:]) for name, value in self.cache.items()}


def _left_pad(array: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad a [rows, ...] mask (axis 1) or [rows, heads, len, dim] cache (axis 2) on the left to ``width``."""
    axis = 1 if array.ndim == 2 else 2
    missing = width - array.shape[axis]
    if missing <= 0:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (missing, 0)
    return np.pad(array, pad)
