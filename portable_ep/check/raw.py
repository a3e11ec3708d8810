"""The physical limit: the bundle in-process on the serving provider, at the batch sizes Triton
can form (min(concurrency, max_batch_size) rows of the request the sweep sends)."""
from __future__ import annotations

import time
from typing import Dict

import numpy as np


def raw_throughput(session, request: Dict[str, np.ndarray], batch: int, seconds: float = 2.0) -> float:
    # A batch of 1 is the request as it is (an unbatched model's scalar inputs have no axis to repeat).
    feeds = dict(request) if batch == 1 else {name: np.ascontiguousarray(np.repeat(array, batch, axis=0))
                                              for name, array in request.items()}
    for _ in range(3):  # warm-up: first-run allocations, kernel selection
        session.run(feeds)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(feeds)
        done += batch
    return done / (time.perf_counter() - start)
