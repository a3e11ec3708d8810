"""Where a Triton server and its python backend live on this machine.

The default is the real ``tritonserver`` that ships inside the ``nvidia-pytriton``
wheel (see FACTS.md); a user's own server (``--tritonserver`` or ``tritonserver`` on
PATH, e.g. an NGC image's /opt/tritonserver) is used when given.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional


class TritonNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class TritonInstallation:
    binary: Path
    #: Triton's own python backend folder (libtriton_python.so, triton_python_backend_utils.py), if found.
    python_backend: Optional[Path]
    #: The python stub built for this interpreter's version, when it is not inside python_backend.
    python_stub: Optional[Path]
    library_path: List[str]
    bundled: bool

    def environment(self) -> dict:
        """Environment for the server: our libraries, and this venv's python3 first on PATH.

        Triton's python stub finds its packages through the first ``python3`` on PATH
        (PYTHONPATH alone is not enough), so the venv holding portable_ep must lead.
        """
        env = dict(os.environ)
        if self.library_path:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(self.library_path + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # FACTS.md: numpy's OpenBLAS threads beside OpenVINO hung a matmul on these machines.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        return env


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def bundled_triton() -> Optional[TritonInstallation]:
    """The tritonserver inside the nvidia-pytriton wheel, or None when it is not installed."""
    import importlib.util

    # Only the wheel's location is needed: importing pytriton itself pulls in its client stack.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        return None
    package_dir = Path(spec.origin).parent
    home = package_dir / "tritonserver"
    binary = home / "bin" / "tritonserver"
    if not binary.is_file():
        return None
    stub = home / "python_backend_stubs" / _python_tag() / "triton_python_backend_stub"
    libs = package_dir.parent / "nvidia_pytriton.libs"
    return TritonInstallation(
        binary=binary,
        python_backend=home / "backends" / "python",
        python_stub=stub if stub.is_file() else None,
        library_path=[str(libs)] if libs.is_dir() else [],
        bundled=True,
    )


def _installation_from_binary(binary: Path) -> TritonInstallation:
    # An NGC-style layout: /opt/tritonserver/bin/tritonserver and /opt/tritonserver/backends/python.
    home = binary.resolve().parent.parent
    python_backend = home / "backends" / "python"
    return TritonInstallation(
        binary=binary,
        python_backend=python_backend if python_backend.is_dir() else None,
        python_stub=None,
        library_path=[],
        bundled=False,
    )


def find_triton(explicit: Optional[str] = None) -> TritonInstallation:
    """``explicit`` path, else ``tritonserver`` on PATH, else the bundled one."""
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TritonNotFound(f"--tritonserver {explicit}: not an executable file")
        return _installation_from_binary(path)
    on_path = shutil.which("tritonserver")
    if on_path:
        return _installation_from_binary(Path(on_path))
    bundled = bundled_triton()
    if bundled is None:
        raise TritonNotFound(
            "no tritonserver found: none on PATH and the bundled one is missing; "
            "install it with pip install 'portable-ep[server]' or pass --tritonserver PATH"
        )
    return bundled
