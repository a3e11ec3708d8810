"""``portable-ep demo``: build a small model, serve it on cpu and openvino, check it end to end."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from portable_ep.console import make_console
from rich.markup import escape
from rich.table import Table

from portable_ep.exporters.onnx_signature import onnx_signature
from portable_ep.exporters.triton_config import build_model_config, write_model
from portable_ep.metrics_text import served_providers
from portable_ep.models.tiny import build_bag_of_words
from portable_ep.triton_process import TritonServer

SEED = 0
TOLERANCE = 1e-5
CHAINS = {"classifier_openvino": "openvino,cpu", "classifier_cpu": "cpu"}


def build_demo_repository(workdir: Path) -> Path:
    model_path = build_bag_of_words(workdir / "bag_of_words.onnx", seed=SEED)
    inputs, outputs = onnx_signature(model_path)
    repository = workdir / "models"
    for name, chain in CHAINS.items():
        config = build_model_config(name, inputs, outputs, max_batch_size=8, providers=chain)
        write_model(repository, config, {"model.onnx": model_path})
    return repository


def demo_inputs(batch: int = 4, sequence: int = 12, vocab: int = 100) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    ids = rng.integers(0, vocab, size=(batch, sequence), dtype=np.int64)
    mask = np.ones((batch, sequence), dtype=np.int64)
    mask[1, 8:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


def infer(protocol: str, url: str, model: str, feeds: Dict[str, np.ndarray]) -> np.ndarray:
    from portable_ep.client import infer_once

    return infer_once(protocol, url, model, feeds)["logits"]


def run_demo(output_dir: Optional[str] = None) -> int:
    import onnxruntime as ort

    console = make_console()
    workdir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="portable-ep-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with console.status("building a tiny text classifier (seed 0) and its model repository"):
        repository = build_demo_repository(workdir)
    feeds = demo_inputs()
    reference = ort.InferenceSession(str(workdir / "bag_of_words.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    console.print(f"model repository: {repository}")
    with console.status("starting tritonserver with the portable_ep backend"):
        server = TritonServer(repository).start()
    worst = 0.0
    try:
        providers = served_providers(server.metrics_text())
        table = Table(title=f"served vs direct ONNX Runtime (batch {len(reference)}, fp32, tolerance {TOLERANCE:g})")
        for column in ("model", "chain", "served by", "precision", "protocol", "max |diff|"):
            table.add_column(column)
        for model, chain in CHAINS.items():
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                diff = float(np.max(np.abs(infer(protocol, url, model, feeds) - reference)))
                worst = max(worst, diff)
                table.add_row(model, chain, providers[model]["provider"], providers[model]["precision"], protocol, f"{diff:.2e}")
        console.print(table)
        for model in CHAINS:
            console.print(f"  {model}: {escape(providers[model]['description'])}")
    finally:
        server.stop()
    ok = worst <= TOLERANCE
    console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/]: worst max |diff| {worst:.2e} (tolerance {TOLERANCE:g})")
    return 0 if ok else 1
