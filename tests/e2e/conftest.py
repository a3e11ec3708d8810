"""A real tritonserver, started once, with the backend directory laid out by the CLI."""
from __future__ import annotations

import pytest

from e2e_repository import SERVED_MODELS, write_repository
from portable_ep.triton_process import TritonServer


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_files, installed_backend_dir):
    repository = write_repository(tmp_path_factory.mktemp("repository"), model_files, SERVED_MODELS)
    with TritonServer(repository, backend_directory=installed_backend_dir) as running:
        yield running
