"""Lay out a complete ``--backend-directory`` for portable-ep.

    DIR/portable_ep/model.py   our shim (Triton finds a Python-based backend by this file)
    DIR/python/                Triton's python backend, copied from the bundled Triton
                               when DIR does not already have one (an NGC image does)
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import List, Optional

from portable_ep.triton_install import TritonInstallation, bundled_triton

BACKEND_NAME = "portable_ep"
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"


class BackendInstallError(RuntimeError):
    pass


@dataclass
class InstallReport:
    backend_directory: Path
    actions: List[str] = field(default_factory=list)


def shim_source() -> str:
    return resources.files("portable_ep.python_backend").joinpath("model.py").read_text()


def install_backend_directory(dest, triton: Optional[TritonInstallation] = None) -> InstallReport:
    # Triton issue #6730: a trailing slash on --backend-directory breaks backend
    # detection, so always hand out a normalised absolute path.
    dest = Path(dest).expanduser().resolve()
    report = InstallReport(dest)
    shim_dir = dest / BACKEND_NAME
    shim_dir.mkdir(parents=True, exist_ok=True)
    (shim_dir / "model.py").write_text(shim_source())
    report.actions.append(f"wrote {shim_dir / 'model.py'}")

    python_dir = dest / "python"
    if (python_dir / "libtriton_python.so").is_file():
        report.actions.append(f"kept the existing python backend in {python_dir}")
        return report
    source = triton if triton is not None and triton.python_backend is not None else bundled_triton()
    if source is None or source.python_backend is None:
        raise BackendInstallError(
            f"{python_dir} has no Triton python backend and none is bundled here; "
            "install pip install 'portable-ep[server]', or install into a backend directory "
            "that already has python/ (e.g. /opt/tritonserver/backends)"
        )
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in PYTHON_BACKEND_FILES:
        shutil.copy2(source.python_backend / name, python_dir / name)
    stub = source.python_stub or (source.python_backend / STUB_NAME)
    if not stub.is_file():
        raise BackendInstallError(
            f"Triton's python stub for Python {sys.version_info.major}.{sys.version_info.minor} was not found at {stub}"
        )
    shutil.copy2(stub, python_dir / STUB_NAME)
    report.actions.append(f"copied Triton's python backend and its Python {sys.version_info.major}.{sys.version_info.minor} stub into {python_dir}")
    return report
