"""Shared fixtures: tiny models built with a fixed seed, once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# FACTS.md: numpy's OpenBLAS threads beside OpenVINO hung matmuls on these machines.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from portable_ep.models.tiny import build_bag_of_words, build_identity, build_mlp, build_string_concat  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory):
    """Compile caches (npu blobs, TensorRT engines) go to a per-run folder, not the user's ~/.cache.

    Set in os.environ so the tritonserver processes the tests start inherit it too.
    """
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    return Path(os.environ["XDG_CACHE_HOME"])


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("onnx-models")
    return {
        "mlp": build_mlp(root / "mlp.onnx", seed=0),
        "identity": build_identity(root / "identity.onnx"),
        "bag_of_words": build_bag_of_words(root / "bag_of_words.onnx", seed=0),
        "string_concat": build_string_concat(root / "string_concat.onnx"),
    }


@pytest.fixture(scope="session")
def reference_run(model_files):
    """Direct in-process ONNX Runtime (CPU, fp32): the reference every served output matches."""
    import onnxruntime as ort

    sessions = {}

    def run(model: str, feeds: dict) -> dict:
        if model not in sessions:
            sessions[model] = ort.InferenceSession(str(model_files[model]), providers=["CPUExecutionProvider"])
        session = sessions[model]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    return run


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
