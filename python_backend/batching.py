"""Validate requests, stack them into one provider call, and split the results back.

Triton's dynamic batcher hands ``execute()`` a list of requests but never stacks
their tensors; doing it here turns N requests into one provider call. Requests
whose non-batch shapes differ cannot share a tensor, so they form separate groups:
one provider call per distinct shape -- except along a masked sequence axis, where
``mixed_lengths`` pads requests of different lengths into one call when its cost
model says that is faster.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from portable_ep.backends.base import Session
from portable_ep.backends.dtypes import short_type_name
from portable_ep.exporters.errors import runtime_cause
from portable_ep.python_backend.mixed_lengths import Item, MixedLengthPolicy, plan_groups
from portable_ep.python_backend.model_config import ServingConfig, TensorSpec
from portable_ep.python_backend.request_limits import RequestLimitError, RequestLimits, symbol_uses

Feeds = Mapping[str, np.ndarray]


class RequestError(ValueError):
    """A problem with one request; only that request fails. The client got it wrong: Triton's
    INVALID_ARGUMENT (HTTP 400)."""


class ModelFailure(RequestError):
    """The runtime failed on one request that passed every check: INTERNAL (HTTP 500), the model's fault."""


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _expected_text(spec: TensorSpec, batched: bool) -> str:
    return _shape_text((["batch"] if batched else []) + [d if d >= 0 else -1 for d in spec.dims])


def shared_dimensions(session: Session, batched: bool, shapes: Optional[Mapping[str, Sequence]] = None) -> Dict[str, List[Tuple[str, int]]]:
    """Symbolic dims the model's inputs share, e.g. ``{"sequence": [("input_ids", 1), ("attention_mask", 1)]}``.

    config.pbtxt can only say -1; the model knows that both inputs' axis 1 is the
    same "sequence", so a request whose inputs disagree is refused here with a clear
    message instead of failing deep inside the runtime.
    """
    uses = symbol_uses(shapes or {tensor.name: tensor.shape for tensor in session.inputs})
    shared = {symbol: [(name, axis) for name, axis in where if not (batched and axis == 0)] for symbol, where in uses.items()}
    return {symbol: where for symbol, where in shared.items() if len(where) > 1}


def validate_request(feeds: Feeds, config: ServingConfig, shared_dims: Mapping[str, Sequence[Tuple[str, int]]] = ()) -> int:
    """Check one request against the config; return its batch size (1 when unbatched)."""
    known = {spec.name for spec in config.inputs}
    unknown = sorted(set(feeds) - known)
    if unknown:
        raise RequestError(
            f"unknown input {', '.join(repr(u) for u in unknown)}; model {config.name!r} takes "
            + ", ".join(spec.describe(config.batched) for spec in config.inputs)
        )
    batch_sizes = {}
    for spec in config.inputs:
        array = feeds.get(spec.name)
        if array is None:
            if spec.optional:
                continue
            raise RequestError(f"missing input {spec.describe(config.batched)}")
        if array.dtype != spec.dtype:
            raise RequestError(
                f"input {spec.name!r} has data type {_type_name(array.dtype)}, expected {_type_name(spec.dtype)}"
            )
        expected_rank = len(spec.dims) + (1 if config.batched else 0)
        inner = array.shape[1:] if config.batched else array.shape
        if array.ndim != expected_rank or any(d >= 0 and d != s for d, s in zip(spec.dims, inner)):
            raise RequestError(
                f"input {spec.name!r} has shape {_shape_text(array.shape)}, expected {_expected_text(spec, config.batched)}"
            )
        if config.batched and array.shape[0] == 0:
            # Zero-size dims are served (a model may take an empty list); an empty batch has no sample to answer for.
            raise RequestError(f"input {spec.name!r} has a batch of 0 (shape {_shape_text(array.shape)}); send at least one sample")
        if config.batched:
            batch_sizes[spec.name] = array.shape[0]
    for symbol in shared_dims:
        sizes = {name: feeds[name].shape[axis] for name, axis in shared_dims[symbol] if name in feeds}
        if len(set(sizes.values())) > 1:
            raise RequestError(
                f"inputs disagree on dimension {symbol!r}: " + ", ".join(f"{n} has {s}" for n, s in sizes.items())
            )
    if not config.batched:
        return 1
    sizes = set(batch_sizes.values())
    if len(sizes) > 1:
        raise RequestError(
            "inputs disagree on the batch size: " + ", ".join(f"{n}={s}" for n, s in batch_sizes.items())
        )
    batch = sizes.pop()
    if batch > config.max_batch_size:
        raise RequestError(f"batch size {batch} exceeds max_batch_size {config.max_batch_size} of model {config.name!r}")
    return batch


def _type_name(dtype: np.dtype) -> str:
    try:
        return short_type_name(dtype)
    except ValueError:
        return str(dtype)


@dataclass
class _Pending:
    index: int
    feeds: Feeds
    batch: int


def _group_key(feeds: Feeds, batched: bool, free_axes: Mapping[str, int] = {}) -> Tuple:
    """Shapes that must match to share a call; axes in ``free_axes`` (padded) are left out."""
    def shape(name, array):
        dims = list(array.shape[1:] if batched else array.shape)
        if name in free_axes:
            dims[free_axes[name] - 1] = None
        return tuple(dims)

    return tuple(sorted((name, shape(name, array)) for name, array in feeds.items()))


def group_requests(pending: Sequence[_Pending], batched: bool, free_axes: Mapping[str, int] = {}) -> List[List[_Pending]]:
    """Requests that can be stacked along axis 0 (after padding ``free_axes``) share a group; order is kept."""
    if not batched:
        return [[p] for p in pending]
    groups: Dict[Tuple, List[_Pending]] = {}
    for p in pending:
        groups.setdefault(_group_key(p.feeds, batched, free_axes), []).append(p)
    return list(groups.values())


def stack_feeds(group: Sequence[_Pending]) -> Dict[str, np.ndarray]:
    if len(group) == 1:
        return dict(group[0].feeds)
    return {name: np.concatenate([p.feeds[name] for p in group], axis=0) for name in group[0].feeds}


def split_outputs(outputs: Mapping[str, np.ndarray], sizes: Sequence[int]) -> List[Dict[str, np.ndarray]]:
    total = sum(sizes)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise RuntimeError(
                f"model output {name!r} has shape {_shape_text(array.shape)} for a batch of {total}; "
                "a model that does not batch along axis 0 needs max_batch_size: 0"
            )
    if len(sizes) == 1:
        return [dict(outputs)]
    bounds = np.cumsum(sizes)[:-1]
    parts = {name: np.split(array, bounds, axis=0) for name, array in outputs.items()}
    return [{name: parts[name][i] for name in outputs} for i in range(len(sizes))]


Result = Union[Dict[str, np.ndarray], Exception]


class BatchExecutor:
    """Runs a list of requests on one session with as few provider calls as possible."""

    def __init__(self, config: ServingConfig, session: Session, limits: Optional[RequestLimits] = None,
                 log: Optional[Callable[[str], None]] = None, input_shapes: Optional[Mapping[str, Sequence]] = None):
        self.config = config
        self.session = session
        self.limits = limits or RequestLimits()
        #: Where a runtime's full error text goes (the server log); the client gets the cause line.
        self.log = log
        self.output_dtypes = {spec.name: spec.dtype for spec in config.outputs}
        self.shared_dims = shared_dimensions(session, config.batched, input_shapes)
        # Scalars of a model that does not batch travel as dims [1] (Triton has no rank 0 there).
        self.scalar_inputs = set() if config.batched else {t.name for t in session.inputs if len(t.shape) == 0}
        #: Provider calls made, and those that padded requests of different lengths together.
        self.provider_calls = 0
        self.padded_calls = 0
        #: Set after load by the backend (it probes the session); None = one call per length.
        self.mixed: Optional[MixedLengthPolicy] = None

    def _run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.provider_calls += 1
        if self.scalar_inputs:
            feeds = {name: (array.reshape(()) if name in self.scalar_inputs else array) for name, array in feeds.items()}
        outputs = self.session.run(feeds)
        result = {}
        for name, dtype in self.output_dtypes.items():
            array = outputs[name]
            if array.ndim == 0 and not self.config.batched:
                array = array.reshape(1)
            result[name] = array if array.dtype == dtype else array.astype(dtype)
        return result

    def execute(self, requests: Sequence[Feeds]) -> List[Result]:
        results: List[Result] = [None] * len(requests)  # type: ignore[list-item]
        pending: List[_Pending] = []
        for index, feeds in enumerate(requests):
            try:
                batch = validate_request(feeds, self.config, self.shared_dims)
                self.limits.check(feeds)
                pending.append(_Pending(index, feeds, batch))
            except RequestLimitError as exc:
                results[index] = RequestError(str(exc))
            except RequestError as exc:
                results[index] = exc
        policy = self.mixed if self.mixed is not None and self.mixed.pads else None
        for group in group_requests(pending, self.config.batched, policy.plan.input_axes if policy else {}):
            if policy is None:
                self._run_group(group, results)
                continue
            if policy.plan.mask not in group[0].feeds:
                # The mask is optional in this config and these requests left it out: padding them
                # would attend to the padding, so only equal shapes share a call.
                for same_shape in group_requests(group, self.config.batched):
                    self._run_group(same_shape, results)
                continue
            lengths = {p.index: policy.plan.length(p.feeds) for p in group}
            by_index = {p.index: p for p in group}
            items = [Item(p.index, p.batch, lengths[p.index]) for p in group]
            calls = plan_groups(items, policy.cost, policy.mode)
            arm = None
            if policy.live is not None and any(len({i.length for i in call}) > 1 for call in calls):
                # The plan pads: run it, or one call per length, whichever measures faster live.
                arm = policy.live.pick()
                if arm == "separate":
                    calls = plan_groups(items, None, "separate")
            started = time.perf_counter()
            for planned in calls:
                members = [by_index[item.index] for item in planned]
                self._run_group(members, results, lengths)
            if arm is not None:
                policy.live.record(arm, sum(i.rows * i.length for i in items), time.perf_counter() - started)
        return results

    def _run_group(self, group: List[_Pending], results: List[Result], lengths: Optional[Mapping[int, int]] = None) -> None:
        plan = self.mixed.plan if lengths is not None else None
        longest = max(lengths[p.index] for p in group) if lengths is not None else 0
        padded = plan is not None and any(lengths[p.index] != longest for p in group)
        try:
            if padded:
                outputs = self._run(stack_feeds([_Pending(p.index, plan.pad(p.feeds, longest), p.batch) for p in group]))
                self.padded_calls += 1
            else:
                outputs = self._run(stack_feeds(group))
            parts = split_outputs(outputs, [p.batch for p in group]) if self.config.batched else [outputs]
            for p, part in zip(group, parts):
                results[p.index] = plan.cut(part, lengths[p.index]) if padded else part
        except Exception as exc:
            if len(group) > 1:
                # One bad request (e.g. a token id past the vocabulary) must not fail
                # the others that happened to share its batch: retry them one by one.
                for p in group:
                    self._run_group([p], results)
                return
            if self.log is not None:
                shapes = ", ".join(f"{n} {_shape_text(a.shape)}" for n, a in group[0].feeds.items())
                self.log(f"{self.session.provider} failed on a request of model {self.config.name!r} ({shapes}): {exc}")
            results[group[0].index] = ModelFailure(f"{self.session.provider} failed on this request: {runtime_cause(exc)}")
