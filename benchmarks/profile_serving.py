"""Where a served request's time goes: py-spy on the model's stub, CPU per process, at concurrency 1 and 16.

    .venv/bin/python benchmarks/profile_serving.py [--model bert-l4|minilm] [--provider cpu] [--seconds 8]

Serves one model with portable-ep (as benchmarks/peers.py builds it), drives it with the
peers' load generator, and meanwhile:

- samples the Python stub that runs ``execute()`` with py-spy (``--native --idle``, raw
  stacks kept in the work dir: open them with speedscope or flamegraph.pl) and splits its
  main thread's samples into: inside the runtime call, portable-ep's own Python (validation,
  limits, stacking, padding, splitting, responses), and waiting for the next batch;
- reads the CPU time of the tritonserver process, the stub (all its threads, the runtime's
  pool included) and this load generator from /proc, in cores.

py-spy slows the stub while it samples (about 10-30 %): read the split, not the rates.
The findings are in docs/performance.md. Needs py-spy (the ``dev`` extra) and ptrace
rights over child processes (root, or kernel.yama.ptrace_scope 0).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_load import drive, prepare  # noqa: E402
from peers import MODELS, Settings, build_repository, console, ensure_model_bundle, traffic  # noqa: E402

from portable_ep.triton_process import TritonServer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "portable_ep"
#: Frames of the runtime call (ONNX Runtime / OpenVINO bindings) as py-spy names them.
RUNTIME_MARKERS = ("onnxruntime", "openvino", "_pyopenvino")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def find_stub(model: str) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "triton_python_backend_stub" in command and f"/{model}/" in command:
            return int(pid)
    raise RuntimeError(f"no python stub process found for model {model!r}")


def split_samples(path: Path) -> dict:
    """Shares of the stub main thread's samples: in the runtime, in portable-ep's Python, waiting."""
    counts: collections.Counter = collections.Counter()
    ours: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("TritonModel.execute" in f or "portable_ep-metrics" in f or "_flush_periodically" in f for f in frames):
            # The stub's own C++ thread waiting on its message queue (no Python frame of ours).
            counts["waiting for a batch (stub, Triton IPC)"] += int(count)
            continue
        if any("_flush_periodically" in f for f in frames):
            continue  # the metrics thread sleeps; it is not on the request path
        if any(any(m in f for m in RUNTIME_MARKERS) for f in frames[1:]):
            counts["runtime call (session.run / infer)"] += int(count)
        else:
            counts["portable-ep Python in execute()"] += int(count)
            leaf = next((f for f in reversed(frames) if "portable_ep" in f or "python_backend" in f), frames[-1])
            ours[leaf.split(" (")[0]] += int(count)
    total = sum(counts.values()) or 1
    return {"shares": {k: v / total for k, v in counts.most_common()},
            "ours_top": [(name, n / total) for name, n in ours.most_common(6)]}


def find_py_spy() -> str:
    """py-spy from this interpreter's environment (the venv's bin/), else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("profile_serving.py: py-spy is not installed; pip install 'portable-ep[dev]' (or py-spy)")
    return found


def profile(server: TritonServer, prepared, output: str, concurrency: int, seconds: float, workdir: Path) -> dict:
    stub = find_stub(MODEL)
    pids = {"tritonserver": server.process.pid, "stub": stub}
    raw = workdir / f"profile-c{concurrency}.pyspy.txt"
    spy = subprocess.Popen([find_py_spy(), "record", "--pid", str(stub), "--native", "--idle", "--rate", "200",
                            "--duration", str(int(seconds)), "--format", "raw", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    result = drive(server.grpc_url, MODEL, prepared, output, concurrency, warmup_s=0.0, seconds=seconds)
    elapsed = time.perf_counter() - started
    cores = {name: (_cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
    cores["load generator"] = result.client_cores
    _, error = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.is_file():
        raise RuntimeError(f"py-spy failed: {error.strip()[-300:]}")
    return {"concurrency": concurrency, "load": result.as_dict(), "cores": cores, **split_samples(raw), "stacks": str(raw)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="bert-l4")
    parser.add_argument("--provider", choices=("cpu", "openvino"), default="cpu")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench-output")
    args = parser.parse_args()
    find_py_spy()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = MODELS[args.model]
    bundle = ensure_model_bundle(model, workdir).resolve()
    manifest = json.loads((bundle / "manifest.json").read_text())
    prepared = prepare(traffic(manifest, "fixed", 64, seed=1))
    repository = build_repository(workdir, bundle, model, args.provider, Settings())
    results = []
    with TritonServer(repository, log_path=workdir / "profile-tritonserver.log") as server:
        drive(server.grpc_url, MODEL, prepared, model.output, 4, warmup_s=1.0, seconds=1.0)  # warm every shape
        for concurrency in (1, 16):
            with console.status(f"profiling {model.key} on {args.provider} at concurrency {concurrency}"):
                results.append(profile(server, prepared, model.output, concurrency, args.seconds, workdir))
    for r in results:
        console.print(f"[bold]{model.title} on {args.provider}, concurrency {r['concurrency']}[/]: "
                      f"{r['load']['inferences_per_s']:.1f} inf/s, p50 {r['load']['p50_ms']:.2f} ms (under py-spy)")
        console.print("  CPU in cores: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items()))
        console.print("  stub main thread: " + ", ".join(f"{k} {v:.1%}" for k, v in r["shares"].items()))
        if r["ours_top"]:
            console.print("  portable-ep Python by frame: " + ", ".join(f"{k} {v:.1%}" for k, v in r["ours_top"]))
        console.print(f"  raw stacks: {r['stacks']}")
    (workdir / "profile.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
