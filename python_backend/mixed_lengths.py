"""Requests of different sequence lengths in one provider call: pad where it is cheaper.

Triton's dynamic batcher hands ``execute()`` requests of any length, and tensors of
different lengths cannot be stacked. Two ways to run them:

- **separate**: one provider call per distinct length (no wasted tokens, one call's fixed
  cost per length);
- **pad**: pad the shorter requests along the sequence axis, with 0 in the attention
  mask so the model ignores the padding, stack them into one call, and cut each
  request's outputs back to its own length (wasted tokens, one fixed cost).

Which is faster depends on the model and the provider, so neither is assumed: at load a
few timed calls fit ``seconds = per_call + per_token * tokens`` on the serving session,
and every batch is split into length groups (sorted by length, contiguous) that
minimise that cost; on live traffic :class:`LiveChooser` keeps that plan only while it
measures faster, in useful tokens per second, than one call per length. Padding is only offered where it provably does not change the
answer: the model must have an attention-mask input on the sequence axis, every output
axis that depends on the sequence must carry the same symbolic name (so it can be cut
back), and a probe at load must give the same outputs padded and unpadded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from portable_ep.python_backend.model_config import ModelConfigError
from portable_ep.python_backend.request_limits import is_named_dim

MODES = ("auto", "pad", "separate")
#: config.pbtxt parameter choosing the policy (auto: the cost model decides per batch).
PARAMETER = "batching.mixed_lengths"
#: Lengths timed at load to fit the cost model (capped by the model's position table).
PROBE_LENGTHS = (16, 128)


class MixedLengthConfigError(ModelConfigError):
    pass


@dataclass(frozen=True)
class PaddingPlan:
    """Where a model's sequence axis is, and how to pad and cut it."""

    symbol: str
    mask: str
    input_axes: Mapping[str, int]  # input name -> axis of ``symbol``
    output_axes: Mapping[str, int]  # output name -> axis of ``symbol`` (cut back per request)

    def length(self, feeds: Mapping[str, np.ndarray]) -> int:
        return int(feeds[self.mask].shape[self.input_axes[self.mask]])

    def pad(self, feeds: Mapping[str, np.ndarray], length: int) -> Dict[str, np.ndarray]:
        """``feeds`` padded with zeros (mask 0: attend to nothing there) up to ``length``."""
        padded = {}
        for name, array in feeds.items():
            axis = self.input_axes.get(name)
            extra = length - array.shape[axis] if axis is not None else 0
            if extra <= 0:
                padded[name] = array
                continue
            widths = [(0, 0)] * array.ndim
            widths[axis] = (0, extra)
            padded[name] = np.pad(array, widths)
        return padded

    def cut(self, outputs: Mapping[str, np.ndarray], length: int) -> Dict[str, np.ndarray]:
        cut = {}
        for name, array in outputs.items():
            axis = self.output_axes.get(name)
            if axis is None or array.shape[axis] == length:
                cut[name] = array
            else:
                index = [slice(None)] * array.ndim
                index[axis] = slice(0, length)
                # A copy: a view would keep the whole padded batch alive and is not contiguous.
                cut[name] = np.ascontiguousarray(array[tuple(index)])
        return cut


def _mask_input(input_shapes: Mapping[str, Sequence], dtypes: Mapping[str, np.dtype]) -> Optional[str]:
    names = [n for n in input_shapes if "mask" in n.lower() and np.dtype(dtypes.get(n, np.float32)).kind in "iub"]
    preferred = [n for n in names if n.lower() == "attention_mask"]
    return (preferred or names or [None])[0]


def find_padding_plan(input_shapes: Mapping[str, Sequence], output_shapes: Mapping[str, Sequence],
                      input_dtypes: Mapping[str, np.dtype], batched: bool) -> Tuple[Optional[PaddingPlan], str]:
    """The plan, or None and the reason padding cannot be used for this model."""
    if not batched:
        return None, "the model does not batch (max_batch_size 0)"
    mask = _mask_input(input_shapes, input_dtypes)
    if mask is None:
        return None, "no attention-mask input to mark padding"
    mask_shape = list(input_shapes[mask])
    if len(mask_shape) != 2 or not is_named_dim(mask_shape[1]):
        return None, f"attention mask {mask!r} is not [batch, named sequence dim] (shape {mask_shape})"
    symbol = mask_shape[1]
    batch_symbol = mask_shape[0] if is_named_dim(mask_shape[0]) else None
    input_axes = {name: list(shape).index(symbol) for name, shape in input_shapes.items() if symbol in list(shape)}
    if any(axis == 0 for axis in input_axes.values()):
        return None, f"dim {symbol!r} is also a batch axis"
    output_axes = {}
    for name, shape in output_shapes.items():
        for axis, dim in enumerate(shape):
            if axis == 0 or isinstance(dim, int) and dim >= 0:
                continue
            if dim == symbol:
                output_axes[name] = axis
            elif dim == batch_symbol or (is_named_dim(dim) and any(dim in s for s in input_shapes.values())):
                continue  # another input's dim: padding the sequence does not change it
            else:
                return None, f"output {name!r} has a dim {dim!r} that may depend on the sequence length and cannot be cut back"
    return PaddingPlan(symbol, mask, input_axes, output_axes), ""


@dataclass
class CostModel:
    """seconds ~ per_call + per_token * rows * length, fitted on the serving session."""

    per_call: float
    per_token: float

    def cost(self, rows: int, length: int) -> float:
        return self.per_call + self.per_token * rows * length

    def describe(self) -> str:
        return f"{self.per_call * 1e3:.2f} ms per call + {self.per_token * 1e6:.2f} us per token"


def _best_time(run: Callable[[], object], repeats: int = 3) -> float:
    run()  # warm-up: first calls of a shape allocate and (OpenVINO) compile kernels
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def probe_feeds(input_shapes: Mapping[str, Sequence], dtypes: Mapping[str, np.dtype], plan: PaddingPlan,
                length: int, vocab_sizes: Mapping[str, int], rows: int = 1, seed: int = 0) -> Dict[str, np.ndarray]:
    """One synthetic request: token-like ids below each vocabulary, mask all ones, other dims 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape in input_shapes.items():
        dims = [rows if axis == 0 else length if dim == plan.symbol else dim if isinstance(dim, int) and dim > 0 else 1
                for axis, dim in enumerate(shape)]
        dtype = np.dtype(dtypes[name])
        if name == plan.mask:
            feeds[name] = np.ones(dims, dtype=dtype)
        elif dtype.kind in "iu":
            high = vocab_sizes.get(name)
            # Ordinary ids above the special tokens where the vocabulary is known, else zeros (e.g. token types).
            feeds[name] = rng.integers(min(100, high - 1), high, size=dims).astype(dtype) if high and high > 1 \
                else np.zeros(dims, dtype=dtype)
        elif dtype.kind == "b":
            feeds[name] = np.ones(dims, dtype=dtype)
        else:
            feeds[name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def padding_changes_outputs(run: Callable[[Dict[str, np.ndarray]], Mapping[str, np.ndarray]], plan: PaddingPlan,
                            feeds: Dict[str, np.ndarray], padded_length: int, exact: bool) -> Optional[str]:
    """None when the outputs of ``feeds`` alone and padded to ``padded_length`` agree; else how they differ."""
    length = plan.length(feeds)
    alone = run(feeds)
    padded = plan.cut(run(plan.pad(feeds, padded_length)), length)
    for name, expected in alone.items():
        got = np.asarray(padded[name], dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        if got.shape != expected.shape:
            return f"output {name!r} is {got.shape} padded, {expected.shape} alone"
        if exact:
            # fp32: padding changes the summation order only.
            bound = 1e-4 + 1e-3 * float(np.abs(expected).max(initial=0.0))
            worst = float(np.abs(got - expected).max(initial=0.0))
            if not worst <= bound:  # NaN included: a probe that answers NaN proves nothing
                return f"output {name!r} differs by {worst:.3g} when padded (allowed {bound:.3g})"
        else:
            # int8/fp16: dynamic quantization scales see the padded rows; demand near-identical direction.
            a, b = got.reshape(-1), expected.reshape(-1)
            cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
            if not cosine >= 0.999:  # NaN included
                return f"output {name!r} has cosine {cosine:.4f} to the unpadded output when padded"
    return None


def fit_cost_model(run: Callable[[Dict[str, np.ndarray]], object], make_feeds: Callable[[int], Dict[str, np.ndarray]],
                   lengths: Sequence[int]) -> CostModel:
    short, long = lengths
    t_short = _best_time(lambda: run(make_feeds(short)))
    t_long = _best_time(lambda: run(make_feeds(long)))
    per_token = max((t_long - t_short) / (long - short), 1e-9)
    per_call = max(t_short - per_token * short, 0.0)
    return CostModel(per_call, per_token)


@dataclass
class Item:
    """One request as the planner sees it."""

    index: int  # position in the caller's list
    rows: int
    length: int


def plan_groups(items: Sequence[Item], cost: Optional[CostModel], mode: str) -> List[List[Item]]:
    """Split requests into groups of one padded call each, cheapest first under ``cost``.

    Sorted by length, the best split is contiguous, so a dynamic programme over the
    sorted list finds it exactly (n <= max_batch_size).
    """
    if not items:
        return []
    ordered = sorted(items, key=lambda item: item.length)
    if mode == "pad" or ordered[0].length == ordered[-1].length:
        return [ordered]
    if mode == "separate" or cost is None:
        groups: Dict[int, List[Item]] = {}
        for item in ordered:
            groups.setdefault(item.length, []).append(item)
        return list(groups.values())
    n = len(ordered)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    prefix_rows = [0]
    for item in ordered:
        prefix_rows.append(prefix_rows[-1] + item.rows)
    for j in range(1, n + 1):
        length = ordered[j - 1].length
        for i in range(j):
            # Equal lengths never split: a cut between them only adds a call.
            if i and ordered[i - 1].length == ordered[i].length:
                continue
            total = best[i] + cost.cost(prefix_rows[j] - prefix_rows[i], length)
            if total < best[j]:
                best[j], cut[j] = total, i
    groups_out: List[List[Item]] = []
    j = n
    while j > 0:
        groups_out.append(list(ordered[cut[j]:j]))
        j = cut[j]
    return groups_out[::-1]


class LiveChooser:
    """Keeps padding only while it measures faster than one call per length on live traffic.

    The cost model is fitted on batch-1 probes at load; real batches (sizes, shapes, a
    neighbour's load, the runtime's caches) can disagree with it. So in ``auto`` every
    batch whose cost-model plan pads is run either as planned ("pad") or one call per
    length ("separate"), and each arm keeps a moving average of useful tokens per second
    of execute time. Both arms are tried ``warmup`` times first; then the faster one is
    used, and the other every ``explore_every``-th batch so a change is noticed.
    """

    ARMS = ("pad", "separate")

    def __init__(self, warmup: int = 8, explore_every: int = 16, decay: float = 0.8):
        self.warmup, self.explore_every, self.decay = warmup, explore_every, decay
        self.rate: Dict[str, float] = {}
        self.samples: Dict[str, int] = {arm: 0 for arm in self.ARMS}
        self.batches = 0

    def best(self) -> Optional[str]:
        if min(self.samples.values()) < self.warmup:
            return None
        return max(self.ARMS, key=lambda arm: self.rate[arm])

    def pick(self) -> str:
        self.batches += 1
        best = self.best()
        if best is None:  # still warming up: the arm with fewer samples (alternating)
            return min(self.ARMS, key=lambda arm: self.samples[arm])
        if self.batches % self.explore_every == 0:
            return next(arm for arm in self.ARMS if arm != best)
        return best

    def record(self, arm: str, tokens: int, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = tokens / seconds
        previous = self.rate.get(arm)
        self.rate[arm] = rate if previous is None else self.decay * previous + (1 - self.decay) * rate
        self.samples[arm] += 1

    def describe(self) -> str:
        if not self.rate:
            return "no mixed batch yet"
        rates = ", ".join(f"{arm} {self.rate[arm]:.0f} tokens/s" for arm in self.ARMS if arm in self.rate)
        best = self.best()
        return f"{'using ' + best if best else 'measuring'} ({rates})"


@dataclass
class MixedLengthPolicy:
    """What the backend does with requests of different lengths, decided at load."""

    mode: str  # "auto", "pad" or "separate" (as configured)
    plan: Optional[PaddingPlan] = None
    cost: Optional[CostModel] = None
    reason: str = ""  # why padding is off, or the probe's figures
    #: auto only: padding kept while it measures faster than one call per length.
    live: Optional[LiveChooser] = None

    @property
    def pads(self) -> bool:
        return self.plan is not None and self.mode != "separate"

    def describe(self) -> str:
        if not self.pads:
            return f"mixed lengths: one provider call per length ({self.reason})"
        how = "always padded into one call" if self.mode == "pad" else (
            f"padded where cheaper ({self.cost.describe()}; kept while faster than one call per length on live traffic)")
        return (f"mixed lengths: {how} along {self.plan.symbol!r}, padding masked by {self.plan.mask!r}; "
                f"outputs cut back: {', '.join(self.plan.output_axes) or 'none'}")


def choose_policy(mode: str, run: Callable[[Dict[str, np.ndarray]], Mapping[str, np.ndarray]],
                  input_shapes: Mapping[str, Sequence], output_shapes: Mapping[str, Sequence],
                  input_dtypes: Mapping[str, np.dtype], batched: bool, exact: bool,
                  vocab_sizes: Mapping[str, int], max_dims: Mapping[str, int]) -> MixedLengthPolicy:
    """Find the padding plan, prove it on a probe, and fit the cost model: all on the serving session."""
    if mode not in MODES:
        raise MixedLengthConfigError(f"parameter {PARAMETER}={mode!r}; use one of {', '.join(MODES)}")
    if mode == "separate":
        return MixedLengthPolicy(mode, reason=f"{PARAMETER}=separate")
    plan, why_not = find_padding_plan(input_shapes, output_shapes, input_dtypes, batched)
    if plan is None:
        return MixedLengthPolicy("separate", reason=why_not)
    short, long = PROBE_LENGTHS
    max_length = max_dims.get(plan.symbol)
    if max_length:
        long = min(long, max_length)
        short = min(short, max(1, long // 4))
    if long <= short:
        return MixedLengthPolicy("separate", reason=f"the sequence is at most {max_length} long")

    def feeds_of(length: int, rows: int = 1) -> Dict[str, np.ndarray]:
        return probe_feeds(input_shapes, input_dtypes, plan, length, vocab_sizes, rows)

    try:
        changed = padding_changes_outputs(run, plan, feeds_of(short, rows=2), long, exact)
    except Exception as exc:  # the probe itself failed: the model does not take these inputs, keep calls separate
        return MixedLengthPolicy("separate", reason=f"padding probe failed: {' '.join(str(exc).split())[:200]}")
    if changed:
        return MixedLengthPolicy("separate", reason=f"padding changes the answer: {changed}")
    if mode == "pad":
        return MixedLengthPolicy(mode, plan=plan)
    try:
        cost = fit_cost_model(run, feeds_of, (short, long))
    except Exception as exc:  # the probe ran, so this is unexpected: never worth failing the load for
        return MixedLengthPolicy("separate", reason=f"cost probe failed: {' '.join(str(exc).split())[:200]}")
    return MixedLengthPolicy(mode, plan=plan, cost=cost, live=LiveChooser())
