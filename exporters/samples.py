"""How samples are laid out in calibration, reference and golden arrays (the bundle's .npz files).

A model that batches takes many samples at once along its axis 0, so N samples are
simply a batch of N: ``input_ids`` of shape (N, sequence). A model that cannot batch
(a scalar input, a state batched on axis 1, a fixed batch of 1) runs one sample per
call, so N samples are stacked along a new leading axis: ``state`` of shape
(N, 2, 1, 128) holds N of the model's (2, 1, 128). Everything that feeds samples to
a model (export's measurements, golden outputs, ``portable-ep check``) goes through
these helpers so both layouts mean the same thing everywhere.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Mapping

import numpy as np

Feeds = Dict[str, np.ndarray]


def rows(feeds: Mapping[str, np.ndarray]) -> int:
    """How many samples ``feeds`` holds (axis 0 in both layouts)."""
    return len(next(iter(feeds.values())))


def take(feeds: Mapping[str, np.ndarray], start: int, stop: int) -> Feeds:
    return {name: array[start:stop] for name, array in feeds.items()}


def model_calls(feeds: Mapping[str, np.ndarray], batched: bool, batch: int = 8) -> Iterator[Feeds]:
    """The inputs of each model call: chunks of ``batch`` samples, or one sample at a time."""
    total = rows(feeds)
    if batched:
        for start in range(0, total, batch):
            yield take(feeds, start, start + batch)
    else:
        for index in range(total):
            yield {name: np.ascontiguousarray(array[index]) for name, array in feeds.items()}


def join(parts: List[Mapping[str, np.ndarray]], batched: bool) -> Feeds:
    """The outputs of ``model_calls`` back in the samples layout."""
    if not parts:
        return {}
    combine = np.concatenate if batched else np.stack
    return {name: combine([np.asarray(p[name]) for p in parts]) for name in parts[0]}


def run_samples(run: Callable[[Feeds], Mapping[str, np.ndarray]], feeds: Mapping[str, np.ndarray],
                batched: bool, batch: int = 8) -> Feeds:
    """Run every sample of ``feeds`` through ``run`` (one model call) and join the outputs."""
    return join([run(call) for call in model_calls(feeds, batched, batch)], batched)


def first_request(feeds: Mapping[str, np.ndarray], batched: bool) -> Feeds:
    """One sample as one request: a batch of 1, or the sample itself."""
    return next(model_calls(feeds, batched, batch=1))


def to_unbatched(feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Batched-layout samples (N, ...) as N one-sample batches (N, 1, ...), for a model found not to batch."""
    return {name: array[:, None] for name, array in feeds.items()}
