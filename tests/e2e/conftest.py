"""A real tritonserver, started once, with the backend directory laid out by the CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from portable_ep.exporters.onnx_signature import onnx_signature
from portable_ep.exporters.triton_config import build_model_config, write_model
from portable_ep.triton_process import TritonServer

# name: (model file, provider chain, extra parameters)
SERVED_MODELS = {
    "mlp_cpu": ("mlp", "cpu", {}),
    "mlp_openvino": ("mlp", "openvino", {}),
    "mlp_fallback": ("mlp", "cuda,cpu", {}),
    "bow_cpu": ("bag_of_words", "cpu", {}),
    "bow_openvino": ("bag_of_words", "openvino", {}),
}
MAX_BATCH_SIZE = 8
# Long enough that 32 concurrent clients reliably share batches on 2 busy cores.
QUEUE_DELAY_US = 5000


def write_repository(root: Path, model_files: dict, models: dict) -> Path:
    for name, (model, chain, parameters) in models.items():
        inputs, outputs = onnx_signature(model_files[model])
        config = build_model_config(
            name, inputs, outputs, max_batch_size=MAX_BATCH_SIZE, dynamic_batching_delay_us=QUEUE_DELAY_US,
            providers=chain, parameters=parameters,
        )
        write_model(root, config, {"model.onnx": model_files[model]})
    return root


@pytest.fixture(scope="session")
def installed_backend_dir(tmp_path_factory) -> Path:
    """`portable-ep backend install DIR`, run as a user would."""
    target = tmp_path_factory.mktemp("backend-dir") / "backends"
    result = subprocess.run(
        [sys.executable, "-m", "portable_ep.cli", "backend", "install", str(target)],
        capture_output=True, text=True, check=True,
    )
    assert "portable_ep/model.py" in result.stdout
    return target


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_files, installed_backend_dir):
    repository = write_repository(tmp_path_factory.mktemp("repository"), model_files, SERVED_MODELS)
    with TritonServer(repository, backend_directory=installed_backend_dir) as running:
        yield running
