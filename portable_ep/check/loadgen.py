"""An asyncio load generator: keeps ``concurrency`` requests in flight on one connection.

tritonclient's aio clients (gRPC by default, HTTP as an option) let one Python process
hold many requests in flight without a thread each; the request tensors are built once
and reused. Warm-up requests are sent first and not counted. The concurrency actually
achieved is sum(latency) / wall time: below the asked level means the generator (or the
client machine), not the server, was the limit.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Dict, List

import numpy as np


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    achieved_concurrency: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # inferences (rows) per second
    first_error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _aio(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    return module


def _inputs(module, feeds: Dict[str, np.ndarray]) -> list:
    from portable_ep.backends.dtypes import wire_type_name

    inputs = []
    for name, array in feeds.items():
        tensor = module.InferInput(name, list(array.shape), wire_type_name(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    return inputs


async def _level(client, model: str, inputs, concurrency: int, requests: int, warmup: int, rows: int) -> LevelResult:
    async def one():
        await client.infer(model, inputs)

    for _ in range(max(warmup, concurrency)):
        await one()
    latencies: List[float] = []
    errors: List[str] = []
    remaining = requests

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            try:
                await one()
            except Exception as exc:  # counted and reported, the sweep goes on
                errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - start)

    wall_start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall_start
    lat_ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return LevelResult(
        concurrency=concurrency, requests=len(latencies), errors=len(errors), seconds=wall,
        achieved_concurrency=float(np.sum(latencies) / wall) if wall > 0 else 0.0,
        p50_ms=float(np.percentile(lat_ms, 50)), p90_ms=float(np.percentile(lat_ms, 90)),
        p99_ms=float(np.percentile(lat_ms, 99)), throughput=len(latencies) * rows / wall if wall > 0 else 0.0,
        first_error=errors[0] if errors else "",
    )


async def _sweep(url: str, protocol: str, model: str, feeds, levels, requests: int, warmup: int) -> List[LevelResult]:
    module = _aio(protocol)
    client = module.InferenceServerClient(url)
    rows = len(next(iter(feeds.values())))
    try:
        inputs = _inputs(module, feeds)
        return [await _level(client, model, inputs, c, max(requests, c), warmup, rows) for c in levels]
    finally:
        await client.close()


def sweep(url: str, protocol: str, model: str, feeds: Dict[str, np.ndarray], levels, requests: int = 400,
          warmup: int = 20) -> List[LevelResult]:
    return asyncio.run(_sweep(url, protocol, model, feeds, list(levels), requests, warmup))
