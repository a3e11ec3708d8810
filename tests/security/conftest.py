"""Fixtures of tests/security: a genuine bundle to make hostile copies of, and a private file of the host."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostile_bundles import SECRET, build_adder


@pytest.fixture(scope="session")
def external_bundle(tmp_path_factory) -> Path:
    """A genuine `portable-ep export` of the adder: model.onnx + model.onnx.data, reference data, manifest."""
    from portable_ep.exporters.bundle import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("external-bundle")
    source = build_adder(root / "source" / "adder.onnx")
    bundle = export_bundle(source, root / "bundle", ExportOptions(formats=("onnx",), precisions=("fp32",),
                                                                  progress=False)).bundle
    assert (bundle / "model.onnx.data").is_file(), sorted(p.name for p in bundle.iterdir())
    return bundle


@pytest.fixture
def secret_file(tmp_path) -> Path:
    """A private file of the serving host, outside any bundle."""
    path = tmp_path / "private" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(SECRET.tobytes())
    os.chmod(path, 0o600)
    return path
