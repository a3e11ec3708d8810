"""Limits a request must respect before the runtime sees it.

The runtime is the wrong place to find out that a request was bad: ONNX Runtime's
Gather wraps negative token ids around (a silently wrong answer), an id past the
vocabulary or a sequence past the position table fails deep inside a kernel, and a
request for a huge tensor can exhaust the stub's memory and get it killed. So each
request is checked here, and refused alone with the limit and the option that sets it.

config.pbtxt parameters (all optional):

- ``request.max_bytes``: bytes of all inputs of one request (default 256 MiB; ``0`` = no
  limit; HTTP requests are capped at 64 MB by Triton itself);
- ``request.max_elements``: elements of any one input (default: no limit);
- ``request.max_dim.<symbol>``: the largest size of a symbolic dim, e.g.
  ``request.max_dim.sequence_length = 256``; the default for a text model's sequence is
  its position table's length (from the bundle's manifest, or the ONNX file);
- ``request.check_token_ids``: refuse ids < 0 or >= the vocabulary (default true);
- ``request.check_finite``: refuse NaN and infinity in float inputs (default true, except
  for models with ``ai.onnx.ml`` operators, where NaN means "missing").
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from portable_ep.backends.base import TRUE_VALUES

# Big enough for a batch of 8 large images in fp32 (8×3×1024×1024×4 = 96 MiB), small
# enough that one request cannot ask for gigabytes (gRPC itself allows 2 GiB messages).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
PREFIX = "request."
KNOWN_OPTIONS = ("max_bytes", "max_elements", "check_token_ids", "check_finite")


class RequestLimitError(ValueError):
    """A request over a limit; the message names the limit and the option that sets it."""


class LimitConfigError(ValueError):
    """A ``request.*`` parameter that cannot be understood."""


@dataclass(frozen=True)
class DimLimit:
    size: int
    #: (input, axis) pairs the symbol stands for, in the model's own layout (batch axis included).
    uses: Tuple[Tuple[str, int], ...]
    origin: str  # where the limit comes from, for the refusal message


@dataclass(frozen=True)
class RequestLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_elements: int = 0
    #: symbol -> its limit
    dims: Mapping[str, DimLimit] = field(default_factory=dict)
    #: input -> number of token ids (rows of the embedding table it indexes)
    vocab_sizes: Mapping[str, int] = field(default_factory=dict)
    check_finite: bool = True

    def describe(self) -> str:
        parts = [f"max_bytes={self.max_bytes or 'off'}"]
        if self.max_elements:
            parts.append(f"max_elements={self.max_elements}")
        parts += [f"max_dim.{symbol}={limit.size} ({limit.origin})" for symbol, limit in self.dims.items()]
        parts += [f"{name} ids < {size}" for name, size in self.vocab_sizes.items()]
        return ", ".join(parts)

    def check(self, feeds: Mapping[str, np.ndarray]) -> None:
        total = 0
        for name, array in feeds.items():
            total += array.nbytes
            if self.max_elements and array.size > self.max_elements:
                raise RequestLimitError(
                    f"input {name!r} has {array.size} elements, over this model's limit of {self.max_elements} "
                    f"(parameter request.max_elements)"
                )
        if self.max_bytes and total > self.max_bytes:
            raise RequestLimitError(
                f"the request's inputs are {_size_text(total)}, over this model's limit of {_size_text(self.max_bytes)} "
                f"(parameter request.max_bytes; split the request into smaller batches)"
            )
        for symbol, limit in self.dims.items():
            for name, axis in limit.uses:
                array = feeds.get(name)
                if array is not None and axis < array.ndim and array.shape[axis] > limit.size:
                    raise RequestLimitError(
                        f"input {name!r} has {symbol} {array.shape[axis]} (axis {axis}), over this model's limit of "
                        f"{limit.size} ({limit.origin}; parameter request.max_dim.{symbol})"
                    )
        for name, vocab in self.vocab_sizes.items():
            array = feeds.get(name)
            if array is None or array.dtype.kind not in "iu" or array.size == 0:
                continue
            low, high = array.min(), array.max()
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                where = tuple(int(i) for i in np.argwhere(array == bad)[0])
                raise RequestLimitError(
                    f"input {name!r} holds token id {int(bad)} at {list(where)}; the vocabulary has {vocab} ids "
                    f"(0..{vocab - 1}) -- tokenize with the model's own tokenizer"
                )
        if self.check_finite:
            for name, array in feeds.items():
                # bfloat16 (ml_dtypes) is numpy kind "V", not "f": checked by name.
                if (array.dtype.kind == "f" or array.dtype.name == "bfloat16") and not np.isfinite(array).all():
                    kind = "NaN" if np.isnan(array).any() else "infinity"
                    where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
                    raise RequestLimitError(
                        f"input {name!r} holds {kind} at {list(where)}; send finite numbers "
                        f"(parameter request.check_finite=false lets them through)"
                    )


def _size_text(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _int_option(parameters: Mapping[str, str], key: str, default: int) -> int:
    value = parameters.get(PREFIX + key)
    if value is None or str(value).strip() == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise LimitConfigError(f"parameter {PREFIX}{key}={value!r} is not an integer") from None
    if number < 0:
        raise LimitConfigError(f"parameter {PREFIX}{key}={value!r} is negative; use 0 for no limit")
    return number


def _bool_option(parameters: Mapping[str, str], key: str, default: bool) -> bool:
    value = parameters.get(PREFIX + key)
    if value is None or str(value).strip() == "":
        return default
    return str(value).strip().lower() in TRUE_VALUES


SymbolUses = Dict[str, List[Tuple[str, int]]]


def is_named_dim(dim) -> bool:
    """A symbolic dim with a name; "?", "" and "-1" are how exporters write an unnamed one,
    and two unnamed dims need not agree."""
    return isinstance(dim, str) and dim.strip() not in ("", "?", "-1")


def symbol_uses(shapes: Mapping[str, Sequence]) -> SymbolUses:
    """``{"sequence_length": [("input_ids", 1), ("attention_mask", 1)]}`` from input shapes."""
    uses: SymbolUses = {}
    for name, shape in shapes.items():
        for axis, dim in enumerate(shape):
            if is_named_dim(dim):
                uses.setdefault(dim, []).append((name, axis))
    return uses


def build_limits(
    parameters: Mapping[str, str],
    shapes: Mapping[str, Sequence],
    model_limits: Optional[Mapping] = None,
) -> RequestLimits:
    """The limits of one model: config.pbtxt's ``request.*`` parameters over what the model says.

    ``shapes`` are the model's input shapes with symbolic names (the manifest's signature,
    or the ONNX file's); ``model_limits`` is the manifest's ``limits`` entry (see
    :func:`limits_from_onnx`): ``{"vocab_sizes": {input: n}, "max_dims": {symbol: n}, "origin": ...}``.
    """
    model_limits = model_limits or {}
    unknown = sorted(
        key[len(PREFIX):] for key in parameters
        if key.startswith(PREFIX) and key[len(PREFIX):] not in KNOWN_OPTIONS and not key.startswith(PREFIX + "max_dim.")
    )
    if unknown:
        raise LimitConfigError(
            f"unknown parameter(s) {', '.join(PREFIX + k for k in unknown)}; known: "
            + ", ".join(PREFIX + k for k in (*KNOWN_OPTIONS, "max_dim.<symbol>"))
        )
    uses = symbol_uses(shapes)
    dims: Dict[str, DimLimit] = {}
    origin = model_limits.get("origin", "the model's position table")
    for symbol, size in (model_limits.get("max_dims") or {}).items():
        if symbol in uses:
            dims[symbol] = DimLimit(int(size), tuple(uses[symbol]), origin)
    for key, value in parameters.items():
        if not key.startswith(PREFIX + "max_dim."):
            continue
        symbol = key[len(PREFIX + "max_dim."):]
        if symbol not in uses:
            raise LimitConfigError(
                f"parameter {key}: the model has no symbolic dim {symbol!r} "
                f"(it has: {', '.join(sorted(uses)) or 'none with a name'})"
            )
        size = _int_option(parameters, "max_dim." + symbol, 0)
        if size:
            dims[symbol] = DimLimit(size, tuple(uses[symbol]), "config.pbtxt")
        else:
            dims.pop(symbol, None)
    check_ids = _bool_option(parameters, "check_token_ids", True)
    finite_default = not model_limits.get("allows_non_finite", False)
    return RequestLimits(
        max_bytes=_int_option(parameters, "max_bytes", DEFAULT_MAX_BYTES),
        max_elements=_int_option(parameters, "max_elements", 0),
        dims=dims,
        vocab_sizes={k: int(v) for k, v in (model_limits.get("vocab_sizes") or {}).items() if k in shapes} if check_ids else {},
        check_finite=_bool_option(parameters, "check_finite", finite_default),
    )


# Position tables as exporters name them: BERT "embeddings.position_embeddings.weight",
# GPT-2 "transformer.wpe.weight", ViT-style "pos_embed".
_POSITION_TABLE = re.compile(r"(position_embed|pos_embed|\bwpe\b|\.wpe\.|positional_embed)", re.IGNORECASE)
# RoBERTa-family models start positions at padding_idx + 1: their tables have 2 rows to spare.
ROBERTA_POSITION_OFFSET = 2


def embedding_vocab_sizes(model, int_inputs: Sequence[str]) -> Dict[str, int]:
    """An integer input that indexes an embedding table (Gather on axis 0 of an initializer) gets its row count."""
    tables = {init.name: list(init.dims) for init in model.graph.initializer}
    sizes: Dict[str, int] = {}
    for node in model.graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (node.op_type == "Gather" and axis == 0 and len(node.input) == 2 and node.input[1] in int_inputs
                and node.input[0] in tables):
            sizes[node.input[1]] = int(tables[node.input[0]][0])
    return sizes


def limits_from_onnx(model, input_shapes: Mapping[str, Sequence], int_inputs: Sequence[str]) -> dict:
    """Vocabulary sizes and the longest sequence an ONNX graph can take, for the manifest.

    - an integer input that indexes an embedding table (Gather on axis 0) has that table's rows as vocabulary;
    - a position table (initializer named like BERT's or GPT-2's) bounds the sequence dim, the
      symbolic dim of those token-id inputs; only when the graph has one table size (CLIP has a
      77-row text table and a 50-row vision one: which bounds the text is not known here);
    - ``ai.onnx.ml`` operators (tree ensembles, imputers) take NaN as "missing": non-finite
      inputs are then allowed by default.
    """
    tables = {init.name: list(init.dims) for init in model.graph.initializer}
    vocab = embedding_vocab_sizes(model, int_inputs)
    limits: dict = {"vocab_sizes": vocab}
    if any(node.domain == "ai.onnx.ml" for node in model.graph.node):
        limits["allows_non_finite"] = True
    positions = {dims[0] for name, dims in tables.items() if len(dims) == 2 and _POSITION_TABLE.search(name)}
    symbols = {dim for name in vocab for dim in list(input_shapes.get(name, ()))[1:] if is_named_dim(dim)}
    if len(positions) == 1 and len(symbols) == 1:
        limits["max_dims"] = {symbols.pop(): int(positions.pop())}
        limits["origin"] = "the model's position table"
    return limits
