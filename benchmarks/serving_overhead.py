"""What does serving through portable-ep cost? Prints figures for two goals.

    .venv/bin/python benchmarks/serving_overhead.py [--quick] [--workdir DIR] [--providers cpu,openvino]

1. Latency floor: p50 latency at concurrency 1 of an identity model served by the
   portable_ep backend, minus that of a bare echo model on Triton's own python
   backend in the same server. Goal: the difference is at most 0.15 ms.
2. Throughput: a 4-layer BERT (random weights, seed 0) served with dynamic batching
   at concurrency 8, divided by the same runtime's in-process throughput on the same
   model. Goal: served / raw is at least 0.90.

Nothing here asserts on speed: the figures depend on the machine and on whatever
else runs on it, so the script prints them with PASS/MISS text and exits 0. The
exported BERT is cached in the work dir (default bench-output/) so re-runs are fast.
"""
from __future__ import annotations

import os

# numpy's OpenBLAS threads beside OpenVINO hung a matmul on our 2-core machines
# (FACTS.md), and any extra threads only steal cores from the server under test.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Dict, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from portable_ep.client import make_client, make_inputs  # noqa: E402
from portable_ep.exporters.onnx_signature import onnx_signature  # noqa: E402
from portable_ep.exporters.triton_config import build_model_config, write_model  # noqa: E402
from portable_ep.metrics_text import parse_series, served_providers  # noqa: E402
from portable_ep.models.tiny import build_identity  # noqa: E402
from portable_ep.triton_process import TritonServer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
LATENCY_GOAL_MS = 0.15
THROUGHPUT_GOAL = 0.90
SEED = 0

# Wide enough for the tables when the output goes to a log file (rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class Settings:
    """How much work each measurement does; --quick shrinks everything to a smoke run."""

    latency_requests: int = 2000  # timed requests per model
    latency_warmup: int = 200  # per model, not timed
    latency_block: int = 100  # requests per model before switching to the other
    concurrency: int = 8
    max_batch_size: int = 8
    queue_delay_us: int = 2000
    throughput_warmup_s: float = 5.0
    throughput_seconds: float = 20.0
    raw_seconds: float = 8.0
    instances: int = 1  # Triton instances of the BERT (each its own stub process)
    threads_per_instance: int = 0  # the runtime's intra-op threads per instance; 0 = its default

    @classmethod
    def quick(cls) -> "Settings":
        return cls(latency_requests=300, latency_warmup=50, latency_block=50,
                   throughput_warmup_s=2.0, throughput_seconds=5.0, raw_seconds=2.0)


# --------------------------------------------------------------------------------------
# Goal 1: latency floor
# --------------------------------------------------------------------------------------

IDENTITY_MODEL = "identity_portable_ep"
ECHO_MODEL = "echo_python"

# Triton's python backend at its cheapest: hand the input tensor back as the output.
ECHO_MODEL_PY = '''\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
            for r in requests
        ]
'''


def build_latency_repository(workdir: Path) -> Path:
    """The identity model on portable_ep and an echo model on "python", configured alike."""
    repository = workdir / "latency-models"
    model_path = build_identity(workdir / "identity.onnx")
    inputs, outputs = onnx_signature(model_path)
    # No dynamic batcher on either: at concurrency 1 its queue delay would be pure added latency.
    ours = build_model_config(IDENTITY_MODEL, inputs, outputs, max_batch_size=8,
                              dynamic_batching_delay_us=None, providers="cpu")
    write_model(repository, ours, {"model.onnx": model_path})
    # The same config with only the backend swapped, so the backend is the only difference.
    echo = build_model_config(ECHO_MODEL, inputs, outputs, max_batch_size=8, dynamic_batching_delay_us=None)
    echo.backend = "python"
    echo_dir = write_model(repository, echo, {})
    (echo_dir / "1" / "model.py").write_text(ECHO_MODEL_PY)
    return repository


def time_requests(client, model: str, inputs, count: int) -> List[float]:
    """Latency in ms of ``count`` sequential requests, as the client sees them."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        client.infer(model, inputs)
        latencies.append((time.perf_counter() - started) * 1e3)
    return latencies


def measure_latency(server: TritonServer, settings: Settings) -> Dict[str, List[float]]:
    """Alternate blocks between the two models so drift (other load, CPU clocks) hits both alike."""
    x = np.random.default_rng(SEED).standard_normal((1, 16)).astype(np.float32)
    inputs = make_inputs("grpc", {"x": x})
    models = [IDENTITY_MODEL, ECHO_MODEL]
    client = make_client("grpc", server.grpc_url)
    try:
        for model in models:
            time_requests(client, model, inputs, settings.latency_warmup)
        latencies: Dict[str, List[float]] = {m: [] for m in models}
        blocks = max(1, settings.latency_requests // settings.latency_block)
        for block in range(blocks):
            # Flip the order every block so neither model always runs right after the other.
            for model in models if block % 2 == 0 else reversed(models):
                latencies[model] += time_requests(client, model, inputs, settings.latency_block)
        return latencies
    finally:
        client.close()


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "n": len(values)}


def run_latency_goal(workdir: Path, settings: Settings) -> dict:
    repository = build_latency_repository(workdir)
    with console.status("latency: serving the identity and echo models"):
        with TritonServer(repository, log_path=workdir / "latency-tritonserver.log") as server:
            latencies = measure_latency(server, settings)
    stats = {model: percentiles(values) for model, values in latencies.items()}
    diff = {k: stats[IDENTITY_MODEL][k] - stats[ECHO_MODEL][k] for k in ("p50", "p90", "p99")}
    table = Table(title=f"Goal 1: latency at concurrency 1, gRPC, batch 1 ({stats[ECHO_MODEL]['n']} timed requests each)")
    for column in ("model", "backend", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(column, justify="right" if "ms" in column else "left")
    table.add_row(IDENTITY_MODEL, "portable_ep (cpu)", *(f"{stats[IDENTITY_MODEL][k]:.3f}" for k in ("p50", "p90", "p99")))
    table.add_row(ECHO_MODEL, "python (echo)", *(f"{stats[ECHO_MODEL][k]:.3f}" for k in ("p50", "p90", "p99")))
    table.add_row("difference", "", *(f"{diff[k]:+.3f}" for k in ("p50", "p90", "p99")))
    console.print(table)
    passed = diff["p50"] <= LATENCY_GOAL_MS
    console.print(f"{verdict(passed)}: p50 overhead over the python-backend floor {diff['p50']:+.3f} ms "
                  f"(goal <= {LATENCY_GOAL_MS} ms)\n")
    return {"stats": stats, "difference_ms": diff, "goal_ms": LATENCY_GOAL_MS, "passed": passed}


# --------------------------------------------------------------------------------------
# Goal 2: throughput
# --------------------------------------------------------------------------------------

BERT = dict(layers=4, hidden=256, heads=4, sequence=128, vocab=30522, labels=2)


def bert_path(workdir: Path) -> Path:
    b = BERT
    return workdir / f"bert-l{b['layers']}-h{b['hidden']}-s{b['sequence']}-v{b['vocab']}-seed{SEED}.onnx"


def export_bert(path: Path) -> Path:
    """The 4-layer BERT classifier from portable_ep.models (config + seed, no download).

    Every request has the same 128 tokens, so the backend stacks them all; the output
    is 2 logits so transfer stays negligible.
    """
    from portable_ep.models.bert import build_bert_classifier

    tmp = path.with_suffix(".tmp.onnx")  # a killed export must not leave a "cached" half file
    build_bert_classifier(tmp, layers=BERT["layers"], hidden=BERT["hidden"], heads=BERT["heads"],
                          vocab=BERT["vocab"], sequence=BERT["sequence"], labels=BERT["labels"], seed=SEED)
    tmp.replace(path)
    return path


def cached_bert(workdir: Path) -> Path:
    path = bert_path(workdir)
    if path.is_file():
        console.print(f"using the cached BERT {path}")
        return path
    import warnings

    with console.status("exporting a 4-layer BERT to ONNX (once; cached in the work dir)"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        return export_bert(path)


def bert_feeds(batch: int, seed: int = SEED) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, BERT["vocab"], size=(batch, BERT["sequence"]), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def build_bert_repository(workdir: Path, model_path: Path, provider: str, settings: Settings) -> str:
    """One model per server: a provider that fails to load only loses its own row."""
    name = f"bert_{provider}"
    inputs, outputs = onnx_signature(model_path)
    parameters = {}
    if settings.threads_per_instance:
        key = {"cpu": "cpu.intra_op_num_threads", "openvino": "openvino.inference_num_threads"}[provider]
        parameters[key] = str(settings.threads_per_instance)
    config = build_model_config(name, inputs, outputs, max_batch_size=settings.max_batch_size,
                                dynamic_batching_delay_us=settings.queue_delay_us, providers=provider,
                                instances=settings.instances, parameters=parameters)
    write_model(workdir / f"throughput-models-{provider}", config, {"model.onnx": model_path})
    return name


def inference_counts(server: TritonServer, model: str) -> Dict[str, float]:
    """Triton's counters (inferences answered, executions = batches run) and ours (seconds in execute())."""
    text = server.metrics_text()

    def value(metric: str) -> float:
        return sum(float(s["value"]) for s in parse_series(text, metric) if s.get("model") == model)

    return {"inferences": value("nv_inference_count"), "executions": value("nv_inference_exec_count"),
            "execute_seconds": value("portable_ep_provider_seconds_total")}


def drive_load(server: TritonServer, model: str, settings: Settings) -> dict:
    """``concurrency`` threads, each with its own gRPC client, send batch-1 requests back to back.

    Only requests that complete inside the timed window count; Triton's counters read
    at the window's edges give the batch size the dynamic batcher actually formed.
    """
    stop = threading.Event()
    done: List[List[float]] = [[] for _ in range(settings.concurrency)]
    errors: List[BaseException] = []

    def worker(index: int) -> None:
        client = make_client("grpc", server.grpc_url)
        inputs = make_inputs("grpc", bert_feeds(1, seed=index))
        try:
            while not stop.is_set():
                client.infer(model, inputs)
                done[index].append(time.perf_counter())
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
            stop.set()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(settings.concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(settings.throughput_warmup_s)
    window_start, before, cpu_before = time.perf_counter(), inference_counts(server, model), time.process_time()
    time.sleep(settings.throughput_seconds)
    window_end, after, cpu_after = time.perf_counter(), inference_counts(server, model), time.process_time()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise RuntimeError(f"a client failed during the throughput run: {errors[0]}")
    completed = sum(window_start <= t < window_end for times in done for t in times)
    executions = after["executions"] - before["executions"]
    inferences = after["inferences"] - before["inferences"]
    busy_seconds = after["execute_seconds"] - before["execute_seconds"]
    return {
        "inferences_per_s": completed / (window_end - window_start),
        "mean_batch": inferences / executions if executions else float("nan"),
        # Where a shortfall comes from: the backend idle between batches (busy < 100%), or
        # slower inside execute() than in-process (inf/s while busy < raw), e.g. core contention.
        "busy_fraction": busy_seconds / (window_end - window_start),
        "busy_inferences_per_s": inferences / busy_seconds if busy_seconds else float("nan"),
        # On 2 cores the load generator competes with the server: show what it took.
        "client_cores": (cpu_after - cpu_before) / (window_end - window_start),
    }


def raw_runner(provider: str, model_path: Path) -> Callable[[Dict[str, np.ndarray]], object]:
    """The provider's runtime used directly, in this process, with no server in between."""
    if provider == "cpu":
        import onnxruntime as ort

        # ORT's defaults, as a caller using ORT directly gets them (the backend additionally
        # turns intra-op spinning off to leave cores to the server; raw has no server to share with).
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if provider == "openvino":
        import openvino as ov

        # fp32 as the served model runs it: OpenVINO would pick bf16 on this CPU by itself.
        compiled = ov.Core().compile_model(str(model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda feeds: request.infer(feeds)
    raise ValueError(f"no raw runner for provider {provider!r}")


def raw_throughput(run: Callable, batch: int, seconds: float) -> float:
    """Inferences/s of back-to-back calls at one batch size, after a short warm-up."""
    feeds = bert_feeds(batch)
    for _ in range(3):
        run(feeds)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(feeds)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


@dataclass
class ThroughputRow:
    provider: str
    served_by: str = ""
    served: float = 0.0
    mean_batch: float = 0.0
    client_cores: float = 0.0  # CPU the load-generating client used during the window, in cores
    busy_fraction: float = 0.0  # share of the window the backend spent in execute()
    busy_inferences_per_s: float = 0.0  # inferences per second of execute() time
    raw: Dict[int, float] = field(default_factory=dict)  # batch size -> inferences/s
    compared_batch: int = 0
    error: str = ""

    @property
    def ratio(self) -> float:
        """Served over raw at the batch the server actually formed: the overhead the goal is about."""
        return self.served / self.raw[self.compared_batch] if self.raw else float("nan")

    @property
    def ratio_best(self) -> float:
        return self.served / max(self.raw.values()) if self.raw else float("nan")


def measure_provider(workdir: Path, model_path: Path, provider: str, settings: Settings) -> ThroughputRow:
    row = ThroughputRow(provider)
    model = build_bert_repository(workdir, model_path, provider, settings)
    with console.status(f"throughput: serving {model} at concurrency {settings.concurrency}"):
        with TritonServer(workdir / f"throughput-models-{provider}",
                          log_path=workdir / f"throughput-{provider}-tritonserver.log") as server:
            row.served_by = served_providers(server.metrics_text())[model]["description"]
            load = drive_load(server, model, settings)
    row.served, row.mean_batch, row.client_cores = load["inferences_per_s"], load["mean_batch"], load["client_cores"]
    row.busy_fraction, row.busy_inferences_per_s = load["busy_fraction"], load["busy_inferences_per_s"]
    # Raw runs after the server has stopped, so the two never share the cores.
    formed = row.mean_batch if np.isfinite(row.mean_batch) else settings.max_batch_size
    row.compared_batch = min(settings.max_batch_size, max(1, round(formed)))
    with console.status(f"throughput: {provider} in-process at batch sizes 1, {row.compared_batch}, {settings.max_batch_size}"):
        run = raw_runner(provider, model_path)
        for batch in sorted({1, row.compared_batch, settings.max_batch_size}):
            row.raw[batch] = raw_throughput(run, batch, settings.raw_seconds)
    return row


def run_throughput_goal(workdir: Path, providers: Sequence[str], settings: Settings) -> List[ThroughputRow]:
    model_path = cached_bert(workdir)
    rows = []
    for provider in providers:
        try:
            rows.append(measure_provider(workdir, model_path, provider, settings))
        except Exception as exc:  # noqa: BLE001 - e.g. openvino missing: report it, keep the other rows
            # Whole message on one line: TritonServer puts the reason (the "failed to load" line) after the first.
            rows.append(ThroughputRow(provider, error=" ".join(str(exc).split()) or type(exc).__name__))
    print_throughput(rows, settings)
    return rows


def print_throughput(rows: Sequence[ThroughputRow], settings: Settings) -> None:
    b = BERT
    table = Table(title=(
        f"Goal 2: BERT L{b['layers']} H{b['hidden']} seq {b['sequence']} fp32, concurrency {settings.concurrency}, "
        f"max_batch_size {settings.max_batch_size}, queue delay {settings.queue_delay_us} us, "
        f"{settings.instances} instance(s)" + (f" x {settings.threads_per_instance} thread(s)" if settings.threads_per_instance else "")
    ))
    for column in ("provider", "served inf/s", "mean batch", "backend busy", "inf/s while busy", "client CPU",
                   "raw inf/s by batch", "served/raw @ formed", "served/best raw"):
        table.add_column(column, justify="left" if column in ("provider", "raw inf/s by batch") else "right")
    for row in rows:
        if row.error:
            table.add_row(row.provider, "[red]failed[/]", "", "", "", "", escape(row.error[:300]), "", "")
            continue
        raw = ", ".join(f"b{k}: {v:.1f}" for k, v in sorted(row.raw.items()))
        table.add_row(row.provider, f"{row.served:.1f}", f"{row.mean_batch:.2f}", f"{row.busy_fraction:.0%}",
                      f"{row.busy_inferences_per_s:.1f}", f"{row.client_cores:.2f} cores", raw,
                      f"{row.ratio:.3f} (b{row.compared_batch})", f"{row.ratio_best:.3f}")
    console.print(table)
    for row in rows:
        if not row.error:
            console.print(f"  {row.provider} served by: {escape(row.served_by)}")
            console.print(f"{verdict(row.ratio >= THROUGHPUT_GOAL)}: {row.provider} served/raw {row.ratio:.3f} "
                          f"at the formed batch {row.compared_batch} (goal >= {THROUGHPUT_GOAL})")
    console.print()


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------

def verdict(passed: bool) -> str:
    return "[green]PASS[/]" if passed else "[yellow]MISS[/]"


def print_summary(latency: Optional[dict], rows: Sequence[ThroughputRow]) -> None:
    table = Table(title="Summary (noisy on a shared 2-core machine: figures, not a test)")
    for column in ("goal", "measured", "target", "verdict"):
        table.add_column(column)
    if latency is not None:
        table.add_row("p50 latency over the python-backend floor", f"{latency['difference_ms']['p50']:+.3f} ms",
                      f"<= {LATENCY_GOAL_MS} ms", verdict(latency["passed"]))
    for row in rows:
        if row.error:
            table.add_row(f"served/raw throughput, {row.provider}", "failed", f">= {THROUGHPUT_GOAL}", "[red]ERROR[/]")
        else:
            table.add_row(f"served/raw throughput, {row.provider} (raw at batch {row.compared_batch})",
                          f"{row.ratio:.3f} (vs best raw {row.ratio_best:.3f})", f">= {THROUGHPUT_GOAL}",
                          verdict(row.ratio >= THROUGHPUT_GOAL))
    console.print(table)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer requests, shorter windows")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench-output",
                        help="model repositories, server logs, the cached BERT and results.json (default: bench-output/)")
    parser.add_argument("--providers", default="cpu,openvino", help="providers for the throughput goal (default: cpu,openvino)")
    parser.add_argument("--queue-delay-us", type=int, default=Settings.queue_delay_us,
                        help="dynamic batcher max_queue_delay_microseconds for the BERT (default: %(default)s)")
    parser.add_argument("--instances", type=int, default=Settings.instances,
                        help="Triton instances of the BERT; a second one only helps when the concurrency exceeds max_batch_size (default: %(default)s)")
    parser.add_argument("--threads-per-instance", type=int, default=Settings.threads_per_instance,
                        help="intra-op threads per instance (cpu.intra_op_num_threads / openvino.inference_num_threads); "
                             "0 leaves the runtime's default (default: %(default)s)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    settings.queue_delay_us = args.queue_delay_us
    settings.instances, settings.threads_per_instance = args.instances, args.threads_per_instance
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"work dir {workdir}; {os.cpu_count()} CPUs shared by tritonserver, its stubs and this client"
                  + (" (--quick: smoke-run sizes)" if args.quick else ""))
    latency = None if args.skip_latency else run_latency_goal(workdir, settings)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    rows = [] if args.skip_throughput else run_throughput_goal(workdir, providers, settings)
    print_summary(latency, rows)
    results = {
        "settings": asdict(settings),
        "latency": latency,
        "throughput": [{**asdict(r), "ratio": r.ratio if not r.error else None,
                        "ratio_best": r.ratio_best if not r.error else None} for r in rows],
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    console.print(f"results written to {workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
