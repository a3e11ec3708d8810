"""Do the shared libraries onnxruntime-gpu's CUDA execution provider links all resolve here?

The CUDA EP (libonnxruntime_providers_cuda.so) links cuBLAS, cuFFT, cuRAND, the CUDA runtime
and cuDNN. On a machine without a GPU the provider is never loaded, so a missing library would
only show on the first GPU host; this check makes it visible anywhere (the cuda image runs it in
`make images`). The libraries come either from the system (LD_LIBRARY_PATH, ldconfig) or from
the nvidia-* wheels in site-packages, which `onnxruntime.preload_dlls()` loads at session time
and which are searched here the same way. The driver's libcuda.so.1 is not linked (the CUDA
runtime opens it on demand) and so is not required.

    python -m portable_ep.backends.cuda_libraries      # exit 1 and the missing names, else 0
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"


def provider_library() -> Optional[Path]:
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "capi" / PROVIDER_LIBRARY
    return path if path.is_file() else None


def wheel_library_dirs() -> List[str]:
    """site-packages/nvidia/<component>/lib of the nvidia-*-cu12 wheels."""
    dirs = []
    for entry in sys.path:
        nvidia = Path(entry) / "nvidia"
        if nvidia.is_dir():
            dirs += sorted(str(lib) for lib in nvidia.glob("*/lib") if lib.is_dir())
    return dirs


def resolve(library: Path) -> Dict[str, Optional[str]]:
    """ldd of the library with the wheels' folders searched: soname → path, or None if not found."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(wheel_library_dirs() + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    output = subprocess.run(["ldd", str(library)], capture_output=True, text=True, env=env, check=False).stdout
    found: Dict[str, Optional[str]] = {}
    for line in output.splitlines():
        match = re.match(r"\s*(\S+) => (not found|(\S+))", line)
        if match:
            found[match.group(1)] = None if match.group(2) == "not found" else match.group(3)
    return found


def missing_libraries() -> List[str]:
    library = provider_library()
    if library is None:
        return [f"{PROVIDER_LIBRARY} (this onnxruntime is not onnxruntime-gpu)"]
    return sorted(name for name, path in resolve(library).items() if path is None)


def main() -> int:
    library = provider_library()
    missing = missing_libraries()
    if missing:
        print(f"CUDA EP libraries missing: {', '.join(missing)} (install onnxruntime-gpu[cuda,cudnn] or a CUDA 12 + "
              f"cuDNN 9 runtime on LD_LIBRARY_PATH)")
        return 1
    resolved = resolve(library)
    nvidia = sorted(name for name, path in resolved.items() if path and "/nvidia/" in path)
    print(f"CUDA EP libraries complete: {library.name} resolves all {len(resolved)} libraries "
          f"({', '.join(nvidia) or 'from the system'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
