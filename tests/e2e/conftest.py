"""A real tritonserver, started once, with the backend directory laid out by the CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from e2e_repository import SERVED_MODELS, write_repository
from portable_ep.triton_process import TritonServer


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
