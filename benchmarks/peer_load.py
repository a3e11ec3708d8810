"""One load generator for every server in benchmarks/peers.py: asyncio gRPC, closed loop.

``concurrency`` coroutines each send one request, wait for its answer and send the next,
walking the same prepared request list (fixed or mixed lengths) in the same order for
every server. Only requests that complete inside the timed window count.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np


@dataclass
class LoadResult:
    inferences_per_s: float
    p50_ms: float
    p99_ms: float
    completed: int
    client_cores: float  # CPU this process used during the window: the load generator shares the cores

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def prepare(requests: Sequence[Dict[str, np.ndarray]]):
    """tritonclient gRPC inputs for each request, built once (encoding is not what is measured)."""
    import tritonclient.grpc.aio as grpcclient

    prepared = []
    for feeds in requests:
        inputs = []
        for name, array in feeds.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(tensor)
        prepared.append(inputs)
    return prepared


async def _drive(url: str, model: str, prepared, output: str, concurrency: int, warmup_s: float, seconds: float) -> LoadResult:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(output)]
    window = {"start": float("inf"), "end": float("inf")}
    done: List[float] = []
    latencies: List[float] = []
    stop = asyncio.Event()

    async def worker(offset: int) -> None:
        index = offset
        while not stop.is_set():
            started = time.perf_counter()
            await client.infer(model, prepared[index % len(prepared)], outputs=outputs)
            ended = time.perf_counter()
            if window["start"] <= started and ended < window["end"]:
                latencies.append(ended - started)
            done.append(ended)
            index += concurrency

    try:
        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup_s)
        window["start"], cpu_start = time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        window["end"], cpu_end = time.perf_counter(), time.process_time()
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    completed = sum(window["start"] <= t < window["end"] for t in done)
    span = window["end"] - window["start"]
    ms = np.array(latencies) * 1e3 if latencies else np.array([float("nan")])
    return LoadResult(completed / span, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), completed,
                      (cpu_end - cpu_start) / span)


def drive(url: str, model: str, prepared, output: str, concurrency: int, warmup_s: float, seconds: float) -> LoadResult:
    return asyncio.run(_drive(url, model, prepared, output, concurrency, warmup_s, seconds))
