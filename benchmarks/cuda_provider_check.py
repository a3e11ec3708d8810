"""Run the cuda provider for real on a GPU machine and compare it with the cpu provider.

    python benchmarks/cuda_provider_check.py [--bert] [--served] [--tensorrt] [--out DIR]

In-process: the chain "cuda,cpu" must pick cuda (not fall back), outputs are compared
with the cpu provider on the same inputs, and p50 latency is measured at batch 1 and 8.
With --served, the same models are served by a real tritonserver (instance_group
KIND_GPU, providers "cuda,cpu") and queried over gRPC. With --tensorrt the cuda provider
runs the TensorRT EP (parameter cuda.tensorrt=1, engine cache under the output folder). Prints a table and writes
cuda_check.json. On a machine without a GPU it prints why cuda is unavailable.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from portable_ep.backends import LoadRequest, default_registry, find_model_artifacts, resolve_provider_chain


def _feeds_for(session, batch: int, rng) -> dict:
    feeds = {}
    for tensor in session.inputs:
        shape = [batch] + [d if isinstance(d, int) else 128 for d in tensor.shape[1:]]
        if tensor.dtype == np.int64:
            feeds[tensor.name] = (rng.integers(0, 1000, size=shape) if "ids" in tensor.name else np.ones(shape)).astype(np.int64)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(tensor.dtype)
    return feeds


def _p50_ms(run, feeds, repeats: int = 50) -> float:
    for _ in range(5):
        run(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def in_process(models: dict, cuda_options: dict) -> list:
    registry = default_registry()
    rows = []
    for name, path in models.items():
        artifacts = find_model_artifacts(path.parent)
        resolution = resolve_provider_chain(["cuda", "cpu"], lambda p: LoadRequest(artifacts, options=cuda_options if p == "cuda" else {}), registry)
        for skipped in resolution.skipped:
            print(f"[{name}] skipped {skipped.name}: {skipped.reason}")
        cpu = registry.get("cpu").load(LoadRequest(artifacts))
        rng = np.random.default_rng(0)
        for batch in (1, 8):
            feeds = _feeds_for(cpu, batch, rng)
            served, reference = resolution.session.run(feeds), cpu.run(feeds)
            diff = max(float(np.max(np.abs(served[k] - reference[k]))) for k in reference)
            rows.append({
                "model": name, "batch": batch, "chosen": resolution.provider,
                "description": resolution.session.description,
                "max_abs_diff_vs_cpu": diff,
                "p50_ms_chosen": _p50_ms(resolution.session.run, feeds),
                "p50_ms_cpu": _p50_ms(cpu.run, feeds),
            })
    return rows


def served(models: dict, workdir: Path, cuda_options: dict) -> list:
    from portable_ep.client import infer_once, make_client
    from portable_ep.exporters.onnx_signature import onnx_signature
    from portable_ep.exporters.triton_config import build_model_config, write_model
    from portable_ep.metrics_text import served_providers
    from portable_ep.triton_process import TritonServer

    repository = workdir / "repository"
    for name, path in models.items():
        inputs, outputs = onnx_signature(path)
        config = build_model_config(name, inputs, outputs, max_batch_size=8, instance_kind="KIND_GPU", providers="cuda,cpu",
                                    parameters={f"cuda.{k}": v for k, v in cuda_options.items()})
        write_model(repository, config, {"model.onnx": path})
    rows = []
    registry = default_registry()
    with TritonServer(repository, log_path=workdir / "tritonserver.log") as server:
        providers = served_providers(server.metrics_text())
        for name, path in models.items():
            cpu = registry.get("cpu").load(LoadRequest(find_model_artifacts(path.parent)))
            feeds = _feeds_for(cpu, 4, np.random.default_rng(1))
            result = infer_once("grpc", server.grpc_url, name, feeds)
            reference = cpu.run(feeds)
            diff = max(float(np.max(np.abs(result[k] - reference[k]))) for k in reference)
            client = make_client("grpc", server.grpc_url)
            times = []
            for _ in range(5):  # warm-up
                infer_once("grpc", server.grpc_url, name, feeds, client=client)
            for _ in range(100):
                t0 = time.perf_counter()
                infer_once("grpc", server.grpc_url, name, feeds, client=client)
                times.append((time.perf_counter() - t0) * 1e3)
            client.close()
            rows.append({"model": name, "served_by": providers[name]["description"], "max_abs_diff_vs_cpu": diff,
                         "p50_ms_served_batch4": statistics.median(times)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bert", action="store_true", help="also build and check a 4-layer BERT (needs torch + transformers)")
    parser.add_argument("--bert-onnx", type=Path, help="check this already exported BERT instead of building one")
    parser.add_argument("--served", action="store_true", help="also serve through a real tritonserver")
    parser.add_argument("--tensorrt", action="store_true", help="run the cuda provider with its TensorRT EP option")
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    args = parser.parse_args()
    cuda_options = {"tensorrt": "1", "trt_engine_cache_path": str((args.out / "trt-engines").resolve())} if args.tensorrt else {}

    availability = default_registry().get("cuda").probe()
    print(f"cuda probe: ok={availability.ok} devices={list(availability.devices)} {availability.reason}")
    workdir = Path(tempfile.mkdtemp(prefix="cuda-check-"))
    from portable_ep.models.tiny import build_mlp

    models = {"mlp": build_mlp(workdir / "mlp" / "model.onnx", seed=0)}
    if args.bert_onnx:
        models["bert"] = workdir / "bert" / "model.onnx"
        models["bert"].parent.mkdir(parents=True)
        models["bert"].write_bytes(args.bert_onnx.read_bytes())
    elif args.bert:
        from portable_ep.models.bert import build_bert_classifier

        models["bert"] = build_bert_classifier(workdir / "bert" / "model.onnx")
    report = {"probe": {"ok": availability.ok, "devices": list(availability.devices), "reason": availability.reason}}
    report["in_process"] = in_process(models, cuda_options)
    for row in report["in_process"]:
        print(json.dumps(row))
    if args.served:
        report["served"] = served(models, workdir, cuda_options)
        for row in report["served"]:
            print(json.dumps(row))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check.json").write_text(json.dumps(report, indent=2))
    return 0 if availability.ok else 1


if __name__ == "__main__":
    sys.exit(main())
