"""int8 (and bf16) vs fp32 throughput on CPU for all-MiniLM-L6-v2 (seq 128), on ONNX Runtime and OpenVINO.

    .venv/bin/python benchmarks/int8_throughput.py [--bundle DIR] [--batch 8] [--seconds 5]

Exports the model once (or reuses --bundle / bench-output/minilm-bundle), loads each
variant through the provider that serves it (so threads and precision hints are the
served ones), and times fp32 and int8 in alternating rounds of the same run. Prints
inferences/s, the int8/fp32 ratio against the 2x goal (which assumes a VNNI CPU), the
int8 recipe each variant was built with (ONNX: ``dynamic-fused`` by default, see
docs/performance.md),
and the cosine of each variant's sentence embeddings to PyTorch fp32 on the bundle's
golden inputs. Where the CPU has native BF16 (AMX or AVX-512 BF16), OpenVINO bf16 (the
fp32 IR with INFERENCE_PRECISION_HINT=bf16) is timed and measured too.
Nothing is asserted: the figures depend on the CPU and on what else runs on it.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # FACTS.md: OpenBLAS threads beside OpenVINO hung matmuls

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

from portable_ep.backends.artifacts import find_model_artifacts  # noqa: E402
from portable_ep.backends.base import LoadRequest  # noqa: E402
from portable_ep.backends.cpu_features import detect_cpu_features  # noqa: E402
from portable_ep.backends.registry import default_registry  # noqa: E402
from portable_ep.console import make_console  # noqa: E402

GOAL = 2.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def ensure_bundle(path: Path, console) -> Path:
    if (path / "manifest.json").is_file():
        return path
    from portable_ep.demo import minilm_folder
    from portable_ep.exporters.bundle import ExportOptions, export_bundle

    console.print(f"exporting all-MiniLM-L6-v2 into {path}")
    return export_bundle(minilm_folder(), path, ExportOptions(name="all-MiniLM-L6-v2", overwrite=True)).bundle


def throughput(session, feeds, seconds: float) -> float:
    session.run(feeds)  # warm-up
    rows = len(next(iter(feeds.values())))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(feeds)
        done += rows
    return done / (time.perf_counter() - start)


def embedding_cosines(session, reference, golden, chunk: int = 8):
    """(mean, worst) cosine of the session's sentence embeddings to the golden ones."""
    rows = len(golden)
    served = np.concatenate([session.run({k: v[i:i + chunk] for k, v in reference.items()})["sentence_embedding"]
                             for i in range(0, rows, chunk)])
    cos = np.sum(served * golden, axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(golden, axis=1))
    return float(cos.mean()), float(cos.min())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "bench-output" / "minilm-bundle")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating fp32/int8 rounds (default: %(default)s)")
    args = parser.parse_args()
    console = make_console()
    bundle = ensure_bundle(args.bundle, console)
    with np.load(bundle / "reference" / "inputs.npz") as data:
        feeds = {name: np.ascontiguousarray(np.resize(data[name], (args.batch, data[name].shape[1]))) for name in data.files}
    seq = feeds["input_ids"].shape[1]
    cpu = detect_cpu_features()
    console.print(f"CPU: {cpu.model_name}; VNNI: {'yes' if cpu.vnni else 'no'}; AMX int8: {'yes' if cpu.amx_int8 else 'no'}; "
                  f"batch {args.batch}, seq {seq}, {args.rounds} alternating rounds of {args.seconds:g} s")
    artifacts = find_model_artifacts(bundle)
    registry = default_registry()
    with np.load(bundle / "reference" / "inputs.npz") as data:
        reference = {name: data[name] for name in data.files}
    with np.load(bundle / "reference" / "outputs.npz") as data:
        golden = data["sentence_embedding"]
    table = Table(title=f"all-MiniLM-L6-v2 throughput vs fp32 (inferences/s, batch {args.batch}, seq {seq})")
    manifest = json.loads((bundle / "manifest.json").read_text())
    recipes = {v["format"]: v.get("quantization", "") for v in manifest["variants"] if v["precision"] == "int8"}
    for column in ("runtime", "precision", "int8 recipe", "inferences/s", "vs fp32", "goal", "embedding cosine to PyTorch mean / worst"):
        table.add_column(column)
    plans = [("cpu", ("fp32", "int8")), ("openvino", ("fp32", "int8") + (("bf16",) if cpu.native_bf16 else ()))]
    for provider_name, precisions in plans:
        provider = registry.get(provider_name)
        sessions = {p: provider.load(LoadRequest(artifacts=artifacts, precision=p)) for p in precisions}
        rates = {p: [] for p in sessions}
        for _ in range(args.rounds):
            for precision, session in sessions.items():
                rates[precision].append(throughput(session, feeds, args.seconds))
        cosines = {p: embedding_cosines(s, reference, golden) for p, s in sessions.items()}
        for session in sessions.values():
            session.close()
        fp32 = float(np.median(rates["fp32"]))
        for precision in precisions:
            rate = float(np.median(rates[precision]))
            ratio = rate / fp32
            goal = "-"
            if precision == "int8":
                goal = "[green]PASS[/]" if ratio >= GOAL else ("[yellow]MISS (no VNNI)[/]" if not cpu.vnni else "[red]MISS[/]")
                goal += f" ({GOAL}x)"
            mean, worst = cosines[precision]
            recipe = recipes.get("onnx" if provider_name == "cpu" else "openvino", "") if precision == "int8" else ""
            table.add_row(provider_name, precision, recipe, f"{rate:.1f}", f"{ratio:.2f}x", goal, f"{mean:.5f} / {worst:.5f}")
    console.print(table)
    if not cpu.native_bf16:
        console.print("bf16 not measured: this CPU has neither AMX nor AVX-512 BF16")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
