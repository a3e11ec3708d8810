"""Is `portable-ep check`'s load generator ever the bottleneck? Prints two figures.

    .venv/bin/python benchmarks/loadgen_floor.py [--requests 6000]

Against the echo floor (Triton's bare python backend handing the input back; the same
model serving_overhead.py uses), on this machine's cores shared with the server:
1. throughput at concurrency 16 with the async gRPC generator: goal >= 3,000 inferences/s;
2. p50 at concurrency 1 vs a bare synchronous tritonclient loop: goal within 20 %.
Blocks alternate so drift hits both alike. Nothing is asserted; figures are printed.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_overhead import ECHO_MODEL, build_latency_repository, time_requests  # noqa: E402

from portable_ep.check.loadgen import sweep  # noqa: E402
from portable_ep.client import make_client, make_inputs  # noqa: E402
from portable_ep.console import make_console  # noqa: E402
from portable_ep.triton_process import TritonServer  # noqa: E402

THROUGHPUT_GOAL = 3000.0
P50_GOAL = 0.20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6000, help="requests per measurement (default: %(default)s)")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks (default: %(default)s)")
    args = parser.parse_args()
    console = make_console()
    workdir = Path(tempfile.mkdtemp(prefix="portable-ep-loadgen-"))
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)}
    with TritonServer(build_latency_repository(workdir)) as server:
        client = make_client("grpc", server.grpc_url)
        inputs = make_inputs("grpc", feeds)
        time_requests(client, ECHO_MODEL, inputs, 200)
        c16, aio_c1, bare_c1, achieved, client_cores, client_us = [], [], [], [], [], []
        for _ in range(args.blocks):
            # The generator's own CPU: on 2 shared cores every core-second it takes is one the
            # server does not get, so this says how much of the ceiling is the client's.
            cpu0, wall0 = time.process_time(), time.perf_counter()
            level = sweep(server.grpc_url, "grpc", ECHO_MODEL, feeds, [16], requests=args.requests, warmup=100)[0]
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            client_cores.append(cpu / wall)
            client_us.append(cpu / (args.requests + 100) * 1e6)
            c16.append(level.throughput)
            achieved.append(level.achieved_concurrency)
            aio_c1.append(sweep(server.grpc_url, "grpc", ECHO_MODEL, feeds, [1], requests=args.requests // 4, warmup=50)[0].p50_ms)
            bare_c1.append(float(np.percentile(time_requests(client, ECHO_MODEL, inputs, args.requests // 4), 50)))
        client.close()
    throughput, p50_aio, p50_bare = float(np.median(c16)), float(np.median(aio_c1)), float(np.median(bare_c1))
    excess = p50_aio / p50_bare - 1
    table = Table(title=f"load generator against the echo floor ({os.cpu_count()} cores, shared with the server)")
    for column in ("measure", "figure", "goal", "verdict"):
        table.add_column(column)
    table.add_row("inferences/s at concurrency 16 (async gRPC)", f"{throughput:.0f} (achieved concurrency {np.median(achieved):.1f})",
                  f">= {THROUGHPUT_GOAL:.0f}", "[green]PASS[/]" if throughput >= THROUGHPUT_GOAL else "[red]MISS[/]")
    table.add_row("p50 at concurrency 1: async generator vs bare tritonclient loop",
                  f"{p50_aio:.3f} ms vs {p50_bare:.3f} ms ({excess:+.0%})", f"within {P50_GOAL:.0%}",
                  "[green]PASS[/]" if excess <= P50_GOAL else "[red]MISS[/]")
    table.add_row("generator CPU during the concurrency-16 run", f"{np.median(client_cores):.2f} cores, "
                  f"{np.median(client_us):.0f} us per request", "-", "-")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
