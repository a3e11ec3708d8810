"""Soak and fault benchmark: steady load with bad requests mixed in and stubs killed on a schedule.

    .venv/bin/python benchmarks/soak.py                     # 30 min, concurrency 16, a kill every 5 min
    .venv/bin/python benchmarks/soak.py --duration 120 --kill-every 60     # the short version the tests run

A supervised tritonserver (as `portable-ep serve` runs it) serves four models exported as
a user would (models/healing.py: a text classifier and a CNN, each on cpu and openvino).
``--concurrency`` clients send requests for ``--duration`` seconds; ``--bad-fraction`` of
them are bad (negative or out-of-vocabulary token ids, sequences past the position table,
NaN images, images that fail inside the runtime, wrong dtypes). Every ``--kill-every``
seconds one model's python stub gets SIGKILL (models in turn).

Printed (and written as JSON with ``--out``), nothing asserted:
- requests served, and **unexpected errors** (goal 0): a good request that failed or was
  answered wrong (vs ONNX Runtime in-process) other than the killed model's while it was
  down, or a bad request that was served;
- per kill: good requests to that model that failed while it was down, and the **time to
  recover** from the kill to its first correct answer (goal <= 10 s);
- p99 latency of good requests per ``--window`` (default 5 min);
- **stub RSS drift** after ``--warmup`` (goal < 5 %): for each stub process that lived at
  least two windows (or a third of the run) after its own warm-up, its last RSS vs its first.
- latency figures are of good requests that were answered correctly.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402

from portable_ep.client import make_client, make_inputs  # noqa: E402
from portable_ep.console import make_console  # noqa: E402
from portable_ep.models.healing import (  # noqa: E402
    BAD_KINDS, HEALING_MODELS, Reference, bad_request, bow_request, bundle_of, conv_request, export_healing_bundles,
    write_healing_repository,
)
from portable_ep.supervisor import find_stubs  # noqa: E402
from portable_ep.triton_process import TritonServer  # noqa: E402

TOLERANCE = 1e-4
RECOVERY_GOAL_S = 10.0
RSS_DRIFT_GOAL = 0.05
SOAK_MODELS = ("bow_cpu", "bow_openvino", "conv_cpu", "conv_openvino")
# What a request to a model that is down is answered (the stub dead, or the model unloaded).
DOWN_SIGNS = ("not healthy", "unknown model", "not ready", "is not found", "unavailable")


@dataclass
class Kill:
    model: str
    at: float  # seconds since the start
    pid: int
    recovered_after_s: Optional[float] = None
    failed_requests: int = 0


@dataclass
class Tally:
    served: int = 0
    good: int = 0
    bad_refused: int = 0
    unexpected: List[str] = field(default_factory=list)
    latencies: List[tuple] = field(default_factory=list)  # (seconds since start, latency s) of good requests


class Soak:
    def __init__(self, server: TritonServer, reference: Reference, args):
        self.server, self.reference, self.args = server, reference, args
        self.start = time.monotonic()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.tally = Tally()
        self.kills: List[Kill] = []
        self.rss: Dict[int, List[tuple]] = {}  # stub pid -> [(seconds, RSS bytes)]
        self.stub_models: Dict[int, str] = {}

    def now(self) -> float:
        return time.monotonic() - self.start

    def _down(self, model: str, sent: float, done: float) -> Optional[Kill]:
        """The kill of ``model`` that a request sent at ``sent`` and answered at ``done`` ran into, if any.

        A request sent before the model served again may fail after that: Triton drains the
        dead instance's queue ("Stub process ... is not healthy") while the new one serves.
        """
        for kill in reversed(self.kills):
            if kill.model != model or done < kill.at:
                continue
            if kill.recovered_after_s is None or sent <= kill.at + kill.recovered_after_s:
                return kill
        return None

    def client_loop(self, index: int) -> None:
        rng = random.Random(index)
        nprng = np.random.default_rng(index)
        client = make_client("grpc", self.server.grpc_url)
        step = 0
        try:
            while not self.stop.is_set():
                step += 1
                if rng.random() < self.args.bad_fraction:
                    self._bad(client, rng.choice(BAD_KINDS), nprng)
                else:
                    self._good(client, SOAK_MODELS[rng.randrange(len(SOAK_MODELS))], seed=index * 10_000_000 + step, rng=rng)
        finally:
            client.close()

    def _bad(self, client, kind: str, rng) -> None:
        model, feeds = bad_request(kind, rng)
        sent = time.monotonic() - self.start
        try:
            client.infer(model, make_inputs("grpc", feeds))
            problem = f"bad request served: {kind}"
        except Exception as exc:  # noqa: BLE001 - refused, as it should be; but by whom?
            message = str(exc)
            # Refused because the model was down is not refused for being bad.
            problem = f"bad request ({kind}) failed for another reason: {message[:200]}" if any(
                sign in message for sign in DOWN_SIGNS) else None
        with self.lock:
            if problem and self._down(model, sent, time.monotonic() - self.start) is not None:
                problem = None  # the killed model, while it is down
            if problem:
                self.tally.unexpected.append(problem)
            else:
                self.tally.bad_refused += 1

    def _good(self, client, model: str, seed: int, rng) -> None:
        if bundle_of(model) == "bow":
            feeds = bow_request(rng.randint(1, 2), rng.randint(4, 48), seed)
        else:
            feeds = conv_request(rng.randint(1, 2), seed)
        sent = time.monotonic()
        try:
            served = client.infer(model, make_inputs("grpc", feeds)).as_numpy("logits")
            error = float(np.max(np.abs(served - self.reference(bundle_of(model), feeds))))
            problem = None if error <= TOLERANCE else f"{model}: wrong answer (max diff {error:.2e})"
        except Exception as exc:  # noqa: BLE001 - classified below
            problem = f"{model}: {str(exc)[:200]}"
        done = time.monotonic()
        with self.lock:
            down = self._down(model, sent - self.start, done - self.start)
            if problem is None:
                self.tally.served += 1
                self.tally.good += 1
                self.tally.latencies.append((sent - self.start, done - sent))
                if down is not None and down.recovered_after_s is None and sent - self.start > down.at:
                    down.recovered_after_s = done - self.start - down.at
            elif down is not None and not problem.startswith(f"{model}: wrong answer"):
                down.failed_requests += 1  # the killed model, while it is down: expected (a wrong answer never is)
            else:
                self.tally.unexpected.append(problem)

    def killer_loop(self) -> None:
        turn = 0
        while not self.stop.wait(self.args.kill_every):
            if self.now() + 15 > self.args.duration:
                return  # leave time to recover before the end
            model = SOAK_MODELS[turn % len(SOAK_MODELS)]
            turn += 1
            stub = next((s for s in find_stubs(self.server.process.pid).values() if s.model == model and not s.dead), None)
            if stub is None:
                continue
            with self.lock:
                self.kills.append(Kill(model, self.now(), stub.pid))
            os.kill(stub.pid, signal.SIGKILL)

    def rss_loop(self) -> None:
        while not self.stop.wait(2.0):
            for pid, stub in find_stubs(self.server.process.pid).items():
                if stub.dead:
                    continue
                try:
                    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
                    rss = int(fields["VmRSS"].split()[0]) * 1024
                except (OSError, KeyError, ValueError):
                    continue
                self.rss.setdefault(pid, []).append((self.now(), rss))
                self.stub_models[pid] = stub.model

    def progress_loop(self, console) -> None:
        while not self.stop.wait(30.0):
            with self.lock:
                t = self.tally
                console.print(f"soak: {self.now():5.0f} s  served {t.served}  bad refused {t.bad_refused}  "
                              f"unexpected {len(t.unexpected)}  kills {len(self.kills)}")

    def run(self, console) -> dict:
        threads = [threading.Thread(target=self.client_loop, args=(i,), daemon=True) for i in range(self.args.concurrency)]
        threads += [threading.Thread(target=loop, daemon=True) for loop in (self.killer_loop, self.rss_loop)]
        threads.append(threading.Thread(target=self.progress_loop, args=(console,), daemon=True))
        for thread in threads:
            thread.start()
        time.sleep(self.args.duration)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=60)
        return self.result()

    def result(self) -> dict:
        args, t = self.args, self.tally
        windows = []
        for start in np.arange(0, args.duration, args.window):
            lat = [l for s, l in t.latencies if start <= s < start + args.window]
            windows.append({"from_s": float(start), "requests": len(lat),
                            "p50_ms": float(np.percentile(lat, 50) * 1e3) if lat else None,
                            "p99_ms": float(np.percentile(lat, 99) * 1e3) if lat else None})
        drifts = []
        for pid, samples in self.rss.items():
            # Warm-up counts from each stub's own start: a stub restarted late is measured after its warm-up too.
            born = samples[0][0]
            after = [(s, r) for s, r in samples if s >= max(args.warmup, born + args.warmup)]
            if len(after) >= 2 and after[-1][0] - after[0][0] >= min(2 * args.window, args.duration / 3):
                drifts.append({"pid": pid, "model": self.stub_models.get(pid, ""), "first_mb": after[0][1] / 2**20,
                               "last_mb": after[-1][1] / 2**20, "lived_s": after[-1][0] - after[0][0],
                               "drift": (after[-1][1] - after[0][1]) / after[0][1]})
        return {
            "duration_s": args.duration, "window_s": args.window, "concurrency": args.concurrency, "bad_fraction": args.bad_fraction,
            "served": t.served, "bad_refused": t.bad_refused, "unexpected_errors": len(t.unexpected),
            "unexpected_examples": t.unexpected[:10], "kills": [asdict(k) for k in self.kills],
            "windows": windows, "rss_drift": drifts,
            "throughput_per_s": t.served / args.duration,
        }


def report(result: dict, console) -> None:
    from rich.table import Table

    console.print(f"[bold]soak[/bold]: {result['duration_s']:.0f} s at concurrency {result['concurrency']}, "
                  f"{result['bad_fraction']:.0%} bad requests; {os.cpu_count()} CPUs")
    console.print(f"  requests served: {result['served']} ({result['throughput_per_s']:.0f}/s); bad requests refused: "
                  f"{result['bad_refused']}; unexpected errors: {result['unexpected_errors']} (goal 0)")
    for example in result["unexpected_examples"]:
        console.print(f"    unexpected: {example}")
    kills = Table(title="stub kills (SIGKILL)")
    for column in ("at s", "model", "failed requests while down", f"time to recover s (goal <= {RECOVERY_GOAL_S:.0f})"):
        kills.add_column(column)
    for kill in result["kills"]:
        recovered = kill["recovered_after_s"]
        kills.add_row(f"{kill['at']:.0f}", kill["model"], str(kill["failed_requests"]),
                      f"{recovered:.2f}" if recovered is not None else "NOT RECOVERED")
    console.print(kills)
    windows = Table(title="latency of good requests per window")
    for column in ("window", "requests", "p50 ms", "p99 ms"):
        windows.add_column(column)
    for w in result["windows"]:
        windows.add_row(f"{w['from_s']:.0f}-{min(w['from_s'] + result['window_s'], result['duration_s']):.0f} s",
                        str(w["requests"]), f"{w['p50_ms']:.1f}" if w["p50_ms"] else "-", f"{w['p99_ms']:.1f}" if w["p99_ms"] else "-")
    console.print(windows)
    if result["rss_drift"]:
        worst = max(result["rss_drift"], key=lambda d: abs(d["drift"]))
        console.print(f"  stub RSS drift after warm-up (goal < {RSS_DRIFT_GOAL:.0%}): worst {worst['drift']:+.2%} ({worst['model']}, "
                      f"{worst['first_mb']:.0f} -> {worst['last_mb']:.0f} MB over {worst['lived_s']:.0f} s); "
                      + ", ".join(f"{d['model']} {d['drift']:+.1%}" for d in result["rss_drift"]))
    else:
        console.print("  stub RSS drift: no stub lived long enough after warm-up to measure")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800, help="seconds of load (default: %(default)s)")
    parser.add_argument("--kill-every", type=float, default=300, help="seconds between stub kills (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients (default: %(default)s)")
    parser.add_argument("--bad-fraction", type=float, default=0.05, help="share of bad requests (default: %(default)s)")
    parser.add_argument("--window", type=float, default=300, help="seconds per latency window (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before RSS drift is measured (default: %(default)s)")
    parser.add_argument("--work", type=Path, help="folder for bundles and the repository (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    return parser.parse_args(argv)


def run_soak(args, console=None) -> dict:
    console = console or make_console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="portable-ep-soak-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        console.print("soak: exporting the models (models/healing.py)")
        bundles = export_healing_bundles(work)
        repository = write_healing_repository(work, bundles, {m: HEALING_MODELS[m] for m in SOAK_MODELS})
        reference = Reference(bundles)
        with TritonServer(repository, supervise=True) as server:
            console.print(f"soak: serving {', '.join(SOAK_MODELS)}; {args.duration:.0f} s of load starts")
            result = Soak(server, reference, args).run(console)
            result["supervisor_log"] = server.log_path.with_name("supervisor.log").read_text() \
                if server.log_path.with_name("supervisor.log").exists() else ""
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    console = make_console()
    result = run_soak(args, console)
    report(result, console)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
