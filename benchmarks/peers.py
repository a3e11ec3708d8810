"""portable-ep against its peers, in one run, with one load generator.

    .venv/bin/python benchmarks/peers.py [--quick] [--models minilm,bert-l4] [--providers cpu,openvino]

Two models, exported once into the work dir (fp32 ONNX for cpu, OpenVINO IR for openvino):
the real all-MiniLM-L6-v2 answering its sentence embedding (~16 ms a request here: the
runtime dominates), and a 4-layer BERT classifier, hidden 256, answering 2 logits
(~2.5 ms a request: serving overhead shows). Per model and provider, the same model is
served by:

- **portable-ep**: the portable_ep backend as `portable-ep repo add` configures it
  (queue delay 0, max_batch_size 8), mixed lengths on its default policy (auto);
- **portable-ep, one call per length**: the same with `batching.mixed_lengths: separate`
  (mixed traffic only: what the length policy is worth);
- **hand-written python backend**: Triton's "python" backend with one runtime call per
  request (benchmarks/peer_handwritten_model.py);
- **PyTriton** 0.7 with `@batch` (one call per length; benchmarks/peer_pytriton.py);
- **raw**: the runtime called in this process with no server: for fixed lengths the
  better of batch 1 and batch 8, for mixed lengths the better of one call per request
  padded groups of 8 as they come, and length-sorted batches of 8 (an offline job that
  knows every request up front: the least padding any batching can have).

Each cell is measured once per round (two by default) with the systems in a rotated
order, and the median is reported; the raw figures are the mean of a run before the
servers start and one after they stop. Every server gets the same dynamic batcher
(max_batch_size 8, queue delay 0) and the same runtime settings (benchmarks/peer_runtime.py:
ONNX Runtime's defaults, intra-op spinning on; OpenVINO at f32). Traffic: fixed (every request 128 tokens) and mixed (16..128 tokens,
uniform, seeded), each at concurrency 1, 8 and 16, servers measured in rotation. The
load generator (benchmarks/peer_load.py, asyncio gRPC) runs on the same cores as the
servers; its CPU share is printed.

Prints a ratio table per provider and the goals of issue 15, writes results.json and
peers.png to the work dir. Nothing is asserted: figures move with the machine.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # FACTS.md: OpenBLAS threads beside OpenVINO hung matmuls

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, Iterator, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_throughput import ensure_bundle  # noqa: E402
from peer_load import drive, prepare  # noqa: E402
from peer_runtime import model_file, open_runtime  # noqa: E402

from portable_ep.backends.cpu_features import detect_cpu_features  # noqa: E402
from portable_ep.exporters.repository import RepoOptions, add_to_repository  # noqa: E402
from portable_ep.exporters.triton_config import config_to_pbtxt, parse_pbtxt  # noqa: E402
from portable_ep.triton_process import TritonServer, free_port  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PEP, PEP_SEPARATE, HANDWRITTEN, PYTRITON = "portable-ep", "portable-ep (one call per length)", "hand-written python", "PyTriton"
MODEL_NAMES = {PEP: "portable_ep", PEP_SEPARATE: "portable_ep_separate", HANDWRITTEN: "handwritten", PYTRITON: "pytriton"}
GOALS = {"vs_pytriton_c16": 1.3, "raw_fixed": 0.9, "raw_mixed": 0.85, "c1_p50_over_raw_ms": 0.5}

console = Console(width=None if sys.stdout.isatty() else 160)


@dataclass
class Settings:
    concurrencies: Sequence[int] = (1, 8, 16)
    rounds: int = 2  # every cell measured once per round, systems in a rotated order; medians reported
    warmup_s: float = 1.0
    seconds: float = 4.0
    raw_seconds: float = 3.0
    requests: int = 256  # distinct prepared requests per traffic kind
    max_batch_size: int = 8
    queue_delay_us: int = 0

    @classmethod
    def quick(cls) -> "Settings":
        return cls(concurrencies=(1, 16), rounds=1, warmup_s=1.0, seconds=3.0, raw_seconds=2.0, requests=64)


# --------------------------------------------------------------------------------------
# Models and traffic
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Model:
    key: str
    title: str
    output: str  # the one output every peer answers with


MODELS = {
    "minilm": Model("minilm", "all-MiniLM-L6-v2 fp32", "sentence_embedding"),
    "bert-l4": Model("bert-l4", "BERT L4 H256 classifier fp32", "logits"),
}


def ensure_model_bundle(model: Model, workdir: Path) -> Path:
    if model.key == "minilm":
        return ensure_bundle(workdir / "minilm-bundle", console)
    bundle = workdir / "bert-l4-bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from portable_ep.exporters.bundle import ExportOptions, export_bundle
    from portable_ep.models.bert import build_bert_classifier

    with console.status("exporting the 4-layer BERT classifier (once; cached in the work dir)"):
        onnx_path = build_bert_classifier(workdir / "bert-l4.onnx", layers=4, hidden=256, heads=4, vocab=8192, seed=0)
        export_bundle(onnx_path, bundle, ExportOptions(name="bert-l4", precisions=("fp32",), overwrite=True, progress=False))
    return bundle


def traffic(manifest: dict, kind: str, count: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    """Batch-1 requests for the bundle's inputs: ordinary token ids (masks of ones, token types 0),
    all 128 long (fixed) or 16..128, uniform (mixed)."""
    rng = np.random.default_rng(seed)
    vocab = (manifest.get("limits") or {}).get("vocab_sizes", {})
    names = [entry["name"] for entry in manifest["signature"]["inputs"]]
    requests = []
    for _ in range(count):
        length = 128 if kind == "fixed" else int(rng.integers(16, 129))
        request = {}
        for name in names:
            if "mask" in name:
                request[name] = np.ones((1, length), dtype=np.int64)
            elif vocab.get(name, 0) > 1000:
                request[name] = rng.integers(1000, vocab[name], size=(1, length), dtype=np.int64)
            else:
                request[name] = np.zeros((1, length), dtype=np.int64)
        requests.append(request)
    return requests


# --------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------

def _only_output(model_dir: Path, output: str) -> None:
    """Keep one output in config.pbtxt: every peer answers with the sentence embedding alone."""
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    kept = [o for o in config.output if o.name == output]
    del config.output[:]
    config.output.extend(kept)
    (model_dir / "config.pbtxt").write_text(config_to_pbtxt(config))


def build_repository(workdir: Path, bundle: Path, model: Model, provider: str, settings: Settings) -> Path:
    """portable-ep (auto and separate) and the hand-written backend, configured alike, in one repository."""
    repository = workdir / f"peers-models-{model.key}-{provider}"
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    for system, mode in ((PEP, "auto"), (PEP_SEPARATE, "separate")):
        options = RepoOptions(max_batch_size=settings.max_batch_size, dynamic_batching_delay_us=settings.queue_delay_us,
                              providers=provider, precision="fp32", parameters={"batching.mixed_lengths": mode})
        model_dir = add_to_repository(bundle, repository, MODEL_NAMES[system], options)
        _only_output(model_dir, model.output)
    # The hand-written model: the portable-ep config with the backend swapped and its two parameters.
    source = repository / MODEL_NAMES[PEP] / "config.pbtxt"
    config = parse_pbtxt(source.read_text())
    config.name, config.backend = MODEL_NAMES[HANDWRITTEN], "python"
    config.parameters.clear()
    config.parameters["provider"].string_value = provider
    config.parameters["model_path"].string_value = str(model_file(bundle, provider).resolve())
    version = repository / config.name / "1"
    version.mkdir(parents=True)
    shutil.copy(HERE / "peer_handwritten_model.py", version / "model.py")
    shutil.copy(HERE / "peer_runtime.py", version / "peer_runtime.py")
    (repository / config.name / "config.pbtxt").write_text(config_to_pbtxt(config))
    return repository


@contextmanager
def pytriton_server(bundle: Path, model: Model, provider: str, settings: Settings, log_path: Path) -> Iterator[str]:
    """PyTriton in a child process (it owns its tritonserver); yields its gRPC url once the model is ready."""
    import tritonclient.grpc as grpcclient

    ports = {name: free_port() for name in ("grpc", "http", "metrics")}
    command = [sys.executable, str(HERE / "peer_pytriton.py"), "--bundle", str(bundle), "--provider", provider,
               "--output", model.output,
               "--max-batch-size", str(settings.max_batch_size), "--queue-delay-us", str(settings.queue_delay_us),
               *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port)))]
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"127.0.0.1:{ports['grpc']}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if child.poll() is not None:
                    raise RuntimeError(f"PyTriton exited with {child.returncode}; see {log_path}")
                try:
                    if grpcclient.InferenceServerClient(url).is_model_ready("pytriton"):
                        break
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PyTriton not ready after 180 s; see {log_path}")
                time.sleep(0.5)
            yield url
        finally:
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()


# --------------------------------------------------------------------------------------
# Raw runtime, in this process
# --------------------------------------------------------------------------------------

def _rate(run, calls: Sequence[Dict[str, np.ndarray]], rows: Sequence[int], seconds: float) -> float:
    """Inferences/s of ``calls`` made back to back (cycled) for ``seconds``."""
    for call in calls[:3]:
        run(call)
    done, index, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(calls[index % len(calls)])
        done += rows[index % len(calls)]
        index += 1
    return done / (time.perf_counter() - started)


def _stack(requests: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """One padded batch (zeros: mask 0 where padded), as a caller without a server would build it."""
    length = max(next(iter(r.values())).shape[1] for r in requests)
    return {name: np.concatenate([np.pad(r[name], ((0, 0), (0, length - r[name].shape[1]))) for r in requests])
            for name in requests[0]}


def raw_figures(bundle: Path, model: Model, provider: str, fixed, mixed, settings: Settings) -> dict:
    run = open_runtime(provider, str(model_file(bundle, provider)), model.output)
    b = settings.max_batch_size
    batches = [_stack(fixed[i:i + b]) for i in range(0, len(fixed) - b + 1, b)]
    groups = [_stack(mixed[i:i + b]) for i in range(0, len(mixed) - b + 1, b)]
    # An offline job's batching: every request known up front, sorted by length, then batches of b.
    by_length = sorted(mixed, key=lambda r: next(iter(r.values())).shape[1])
    buckets = [_stack(by_length[i:i + b]) for i in range(0, len(by_length) - b + 1, b)]
    figures = {
        "fixed_b1": _rate(run, fixed, [1] * len(fixed), settings.raw_seconds),
        f"fixed_b{b}": _rate(run, batches, [b] * len(batches), settings.raw_seconds),
        "mixed_per_request": _rate(run, mixed, [1] * len(mixed), settings.raw_seconds),
        f"mixed_padded_b{b}": _rate(run, groups, [b] * len(groups), settings.raw_seconds),
        f"mixed_sorted_b{b}": _rate(run, buckets, [b] * len(buckets), settings.raw_seconds),
    }
    latencies = []
    for request in fixed[:50] * 4:
        started = time.perf_counter()
        run(request)
        latencies.append((time.perf_counter() - started) * 1e3)
    figures["fixed_b1_p50_ms"] = float(np.percentile(latencies, 50))
    return figures


def best_raw(raw: dict, kind: str) -> tuple:
    """The best raw strategy a server could also use: requests as they arrive, alone or batched.

    The length-sorted offline figure (every request known up front) is printed beside it
    as a bound, not used as the yardstick: no online server sees the future requests."""
    candidates = {k: v for k, v in raw.items() if k.startswith(kind) and not k.endswith("_ms") and "sorted" not in k}
    key = max(candidates, key=candidates.get)
    return candidates[key], key[len(kind) + 1:]


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

def measure_provider(workdir: Path, bundle: Path, model: Model, provider: str, settings: Settings) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    requests = {kind: traffic(manifest, kind, settings.requests, seed=1) for kind in ("fixed", "mixed")}
    prepared = {kind: prepare(reqs) for kind, reqs in requests.items()}
    # Raw runs before the servers start and after they stop (never beside them); each figure is the mean.
    with console.status(f"{model.key} {provider}: the runtime in-process, before the servers"):
        raw_before = raw_figures(bundle, model, provider, requests["fixed"], requests["mixed"], settings)
    repository = build_repository(workdir, bundle, model, provider, settings)
    samples: Dict[tuple, List[dict]] = {}
    logs = workdir / f"peers-{model.key}-{provider}"
    with TritonServer(repository, log_path=f"{logs}-tritonserver.log") as server, \
            pytriton_server(bundle, model, provider, settings, Path(f"{logs}-pytriton.log")) as pytriton_url:
        urls = {PEP: server.grpc_url, PEP_SEPARATE: server.grpc_url, HANDWRITTEN: server.grpc_url, PYTRITON: pytriton_url}
        for round_index in range(settings.rounds):
            for kind in ("fixed", "mixed"):
                systems = [PEP, PYTRITON, HANDWRITTEN] + ([PEP_SEPARATE] if kind == "mixed" else [])
                for position, concurrency in enumerate(settings.concurrencies):
                    # Rotate the order per cell and round so no system always runs first (clocks, caches,
                    # a neighbour's load on a shared machine).
                    turn = (position + round_index) % len(systems)
                    for system in systems[turn:] + systems[:turn]:
                        with console.status(f"{model.key} {provider} round {round_index + 1}/{settings.rounds}: "
                                            f"{kind} lengths, concurrency {concurrency}: {system}"):
                            result = drive(urls[system], MODEL_NAMES[system], prepared[kind], model.output, concurrency,
                                           settings.warmup_s, settings.seconds)
                        samples.setdefault((kind, concurrency, system), []).append(result.as_dict())
        calls = calls_of(server.metrics_text(), MODEL_NAMES[PEP])
    with console.status(f"{model.key} {provider}: the runtime in-process, after the servers"):
        raw_after = raw_figures(bundle, model, provider, requests["fixed"], requests["mixed"], settings)
    raw = {key: (raw_before[key] + raw_after[key]) / 2 for key in raw_before}
    cells = []
    for kind in ("fixed", "mixed"):
        for concurrency in settings.concurrencies:
            systems = {system: _median(runs) for (k, c, system), runs in samples.items() if (k, c) == (kind, concurrency)}
            cells.append({"provider": provider, "traffic": kind, "concurrency": concurrency, "systems": systems,
                          "runs": {s: runs for (k, c, s), runs in samples.items() if (k, c) == (kind, concurrency)}})
    return {"model": model.key, "title": model.title, "provider": provider, "cells": cells, "raw": raw,
            "raw_before_after": [raw_before, raw_after], "portable_ep_calls": calls}


def calls_of(metrics: str, model_name: str) -> dict:
    """The served model's runtime calls over the whole run, and how many of them were padded."""
    found = {}
    for line in metrics.splitlines():
        for metric, key in (("portable_ep_provider_calls_total", "calls"), ("portable_ep_padded_calls_total", "padded")):
            if line.startswith(metric + "{") and f'model="{model_name}"' in line:
                found[key] = found.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return found


def _median(runs: Sequence[dict]) -> dict:
    """The run with the median throughput (its latencies with it), so one figure never mixes runs."""
    ordered = sorted(runs, key=lambda r: r["inferences_per_s"])
    return ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else {
        key: (ordered[len(ordered) // 2 - 1][key] + ordered[len(ordered) // 2][key]) / 2 for key in ordered[0]}


def ratios(result: dict) -> List[dict]:
    rows = []
    raw = result["raw"]
    for cell in result["cells"]:
        s = cell["systems"]
        raw_best, strategy = best_raw(raw, cell["traffic"])
        pep = s[PEP]["inferences_per_s"]
        rows.append({
            "traffic": cell["traffic"], "concurrency": cell["concurrency"],
            **{f"{name} inf/s": s[name]["inferences_per_s"] for name in s},
            "pep p50 ms": s[PEP]["p50_ms"], "pytriton p50 ms": s[PYTRITON]["p50_ms"],
            "vs PyTriton": pep / s[PYTRITON]["inferences_per_s"],
            "vs hand-written": pep / s[HANDWRITTEN]["inferences_per_s"],
            "served/raw": pep / raw_best, "raw": f"{raw_best:.1f} ({strategy})",
            "served/offline": pep / raw[f"mixed_sorted_b{max_batch(raw)}"] if cell["traffic"] == "mixed" else None,
            "client cores": s[PEP]["client_cores"],
        })
    return rows


def max_batch(raw: dict) -> int:
    return int(next(k for k in raw if k.startswith("mixed_sorted_b")).rsplit("_b", 1)[1])


def print_provider(result: dict) -> None:
    table = Table(title=f"{result['title']} on {result['provider']}: inferences/s, max_batch_size 8, queue delay 0; "
                        "ratios are portable-ep's")
    columns = ["traffic", "c", "portable-ep", "PyTriton", "hand-written", "pep 1 call/length", "raw best", "vs PyTriton",
               "vs hand-written", "served/raw", "p50 ms pep/PyT", "client CPU"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("traffic", "raw best") else "right")
    for row, cell in zip(ratios(result), result["cells"]):
        s = cell["systems"]
        table.add_row(row["traffic"], str(row["concurrency"]),
                      *(f"{s[n]['inferences_per_s']:.1f}" if n in s else "-" for n in (PEP, PYTRITON, HANDWRITTEN, PEP_SEPARATE)),
                      row["raw"], f"{row['vs PyTriton']:.2f}x", f"{row['vs hand-written']:.2f}x", f"{row['served/raw']:.2f}",
                      f"{row['pep p50 ms']:.1f}/{row['pytriton p50 ms']:.1f}", f"{row['client cores']:.2f}")
    console.print(table)
    raw = result["raw"]
    console.print("  raw in-process: " + ", ".join(f"{k} {v:.1f}" for k, v in raw.items()))
    bound = ", ".join(f"c{r['concurrency']} {r['served/offline']:.2f}" for r in ratios(result) if r["served/offline"])
    console.print(f"  mixed, served / offline length-sorted batches (a bound no online server reaches): {bound}")
    calls = result.get("portable_ep_calls")  # absent in results written before it was recorded
    if calls:
        console.print(f"  portable-ep (auto) runtime calls: {calls.get('calls', 0)}, of them padded (several lengths "
                      f"in one call): {calls.get('padded', 0)}")


def goals(results: Sequence[dict]) -> List[dict]:
    lines = []
    for result in results:
        provider, raw = f"{result['model']} {result['provider']}", result["raw"]
        cells = {(c["traffic"], c["concurrency"]): c["systems"] for c in result["cells"]}
        top = max(c for _, c in cells)
        for kind in ("fixed", "mixed"):
            s = cells.get((kind, top))
            if s is None:
                continue
            lines.append({"goal": f"{provider} {kind}: portable-ep / PyTriton at concurrency {top}",
                          "value": s[PEP]["inferences_per_s"] / s[PYTRITON]["inferences_per_s"], "target": GOALS["vs_pytriton_c16"]})
            raw_best, strategy = best_raw(raw, kind)
            lines.append({"goal": f"{provider} {kind}: served / raw ({strategy}) at concurrency {top}",
                          "value": s[PEP]["inferences_per_s"] / raw_best, "target": GOALS[f"raw_{kind}"]})
        c1 = cells.get(("fixed", 1))
        if c1 is not None:
            over = c1[PEP]["p50_ms"] - raw["fixed_b1_p50_ms"]
            lines.append({"goal": f"{provider}: concurrency-1 p50 over raw batch-1 ({c1[PEP]['p50_ms']:.2f} vs "
                                  f"{raw['fixed_b1_p50_ms']:.2f} ms)", "value": over, "target": GOALS["c1_p50_over_raw_ms"],
                          "lower_is_better": True})
    return lines


def print_goals(lines: Sequence[dict]) -> None:
    table = Table(title="Issue 15 goals (one run, noisy on a shared machine: figures, not a test)")
    for column in ("goal", "measured", "target", "verdict"):
        table.add_column(column)
    for line in lines:
        low = line.get("lower_is_better")
        passed = line["value"] <= line["target"] if low else line["value"] >= line["target"]
        measured = f"{line['value']:+.2f} ms" if low else f"{line['value']:.2f}"
        table.add_row(line["goal"], measured, ("<= " if low else ">= ") + str(line["target"]),
                      "[green]PASS[/]" if passed else "[yellow]MISS[/]")
    console.print(table)


def plot(results: Sequence[dict], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [PEP, PYTRITON, HANDWRITTEN, PEP_SEPARATE]
    columns = 2 if len(results) > 1 else 1
    rows = (len(results) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 4.2 * rows), squeeze=False)
    for ax, result in zip(axes.flat, results):
        cells = result["cells"]
        x = np.arange(len(cells))
        width = 0.8 / (len(systems) + 1)
        for i, system in enumerate(systems):
            values = [c["systems"].get(system, {}).get("inferences_per_s", 0.0) for c in cells]
            ax.bar(x + i * width, values, width, label=system)
        raw = [best_raw(result["raw"], c["traffic"])[0] for c in cells]
        ax.bar(x + len(systems) * width, raw, width, label="raw (best strategy)", color="0.6")
        ax.set_xticks(x + 0.4 - width / 2, [f"{c['traffic']}\nc{c['concurrency']}" for c in cells])
        ax.set_ylabel("inferences/s")
        ax.set_title(f"{result['title']} on {result['provider']}", fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(machine, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: concurrency 1 and 16, 3-second windows")
    parser.add_argument("--providers", default="cpu,openvino", help="cpu, openvino or both (default: %(default)s)")
    parser.add_argument("--models", default="minilm,bert-l4", help=f"{', '.join(MODELS)} (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench-output",
                        help="the cached bundle, repositories, server logs, results (default: bench-output/)")
    parser.add_argument("--from-json", type=Path, metavar="PEERS.json",
                        help="print the tables, goals and PNG of an earlier run's peers.json instead of measuring")
    parser.add_argument("--rounds", type=int, help="rounds per cell, medians reported (default: 2, --quick 1)")
    parser.add_argument("--seconds", type=float, help="timed window per measurement (default: 4, --quick 3)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.seconds:
        settings.seconds = args.seconds
    if args.rounds:
        settings.rounds = args.rounds
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        console.print(earlier["machine"])
        for result in earlier["results"]:
            print_provider(result)
        print_goals(goals(earlier["results"]))
        plot(earlier["results"], workdir / "peers.png", earlier["machine"])
        console.print(f"written: {workdir / 'peers.png'}")
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"peers.py: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    cpu = detect_cpu_features()
    machine = f"{cpu.model_name}, {os.cpu_count()} CPUs shared by the servers and the load generator"
    console.print(machine)
    results = []
    for key in models:
        model = MODELS[key]
        bundle = ensure_model_bundle(model, workdir).resolve()
        for provider in [p.strip() for p in args.providers.split(",") if p.strip()]:
            result = measure_provider(workdir, bundle, model, provider, settings)
            print_provider(result)
            results.append(result)
    lines = goals(results)
    print_goals(lines)
    png = workdir / "peers.png"
    plot(results, png, machine)
    out = {"machine": machine, "settings": asdict(settings), "results": results,
           "ratios": {f"{r['model']} {r['provider']}": ratios(r) for r in results}, "goals": lines}
    (workdir / "peers.json").write_text(json.dumps(out, indent=2))
    console.print(f"written: {workdir / 'peers.json'}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
