"""A wheelhouse per target: the build context of its image, so builds never reach an index.

    <root>/<target>/deps/   every third-party wheel for the target's Python and C library,
                            requirements.txt (the pinned closure) and server.txt (tritonserver)
    <root>/<target>/dist/   the portable-ep wheel built from this checkout + requirements.txt

Downloads are skipped when a stamp says the same requirements were fetched before, so a
rerun (or a machine with no index at all, given a copied wheelhouse) builds offline.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, List

from portable_ep.images.targets import Target

SERVER_REQUIREMENT = "nvidia-pytriton"  # carries tritonserver 2.51; installed without its client-side deps
# Wheels built on the same sources get the same bytes, so an unchanged checkout keeps Docker's cache.
REPRODUCIBLE_EPOCH = "315532800"


class WheelhouseError(RuntimeError):
    pass


def platform_args(target: Target) -> List[str]:
    """pip flags that select wheels for the image's interpreter, not this host's."""
    major, minor = (int(x) for x in target.glibc.split("."))
    py = target.python.replace(".", "")
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)] + ["manylinux2014_x86_64"]
    args = ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp",
            "--abi", f"cp{py}", "--abi", "abi3", "--abi", "none"]
    for tag in tags:
        args += ["--platform", tag]
    return args


def wheel_name_version(path: Path):
    name, version = path.name.split("-")[:2]
    return name.replace("_", "-").lower(), version


def _pin(constraints: Path, name: str) -> str:
    for line in constraints.read_text().splitlines():
        line = line.split("#")[0].strip()
        if re.match(rf"^{re.escape(name)}\s*==", line, re.IGNORECASE):
            return line.replace(" ", "")
    raise WheelhouseError(f"{constraints} pins no {name}; add {name}==VERSION")


def _pip(args: List[str], log: Callable[[str], None]) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-8:])
        raise WheelhouseError(f"pip {args[0]} failed (exit {result.returncode}):\n{tail}")


def build_project_wheel(project_dir: Path, dist: Path) -> Path:
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob("portable_ep-*.whl"):
        old.unlink()
    env = dict(os.environ, SOURCE_DATE_EPOCH=REPRODUCIBLE_EPOCH)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(project_dir)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wheels = list(dist.glob("portable_ep-*.whl"))
    if result.returncode != 0 or not wheels:
        raise WheelhouseError(f"building the portable-ep wheel failed:\n{result.stdout[-2000:]}")
    return wheels[0]


@functools.lru_cache(maxsize=None)
def project_wheel_once(project_dir: Path, dist: Path) -> Path:
    """The checkout's wheel, built once per run and copied into every target's context."""
    return build_project_wheel(project_dir, dist)


def _requires(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return "\n".join(line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist"))


def build_wheelhouse(target: Target, root: Path, project_dir: Path, constraints: Path,
                     log: Callable[[str], None] = print, download: bool = True) -> Path:
    """The target's build context (``root/<target>``), filled; ``download=False`` only reuses."""
    context = root / target.name
    deps, dist = context / "deps", context / "dist"
    built = project_wheel_once(project_dir.resolve(), (root / "_project").resolve())
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob("portable_ep-*.whl"):
        old.unlink()
    wheel = Path(shutil.copy2(built, dist / built.name))
    _, version = wheel_name_version(wheel)
    extras = f"[{','.join(target.extras)}]" if target.extras else ""
    (dist / "requirements.txt").write_text(f"portable-ep{extras}=={version}\n")

    server_pin = _pin(constraints, SERVER_REQUIREMENT) if target.server else ""
    stamp_text = "\n".join([constraints.read_text(), _requires(wheel), extras, server_pin, *platform_args(target)])
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()
    stamp_file = deps / ".stamp"
    if stamp_file.is_file() and stamp_file.read_text() == stamp and (deps / "requirements.txt").is_file():
        log(f"wheelhouse {target.name}: reusing {deps} ({len(list(deps.glob('*.whl')))} wheels)")
        return context
    if not download:
        raise WheelhouseError(f"{deps} does not hold this checkout's requirements and downloads are off; "
                              "run once with the index reachable, or copy in a wheelhouse made elsewhere")
    if deps.exists():
        shutil.rmtree(deps)
    deps.mkdir(parents=True)
    log(f"wheelhouse {target.name}: pip download for Python {target.python}, glibc {target.glibc} into {deps}")
    _pip(["download", "-q", "-d", str(deps), *platform_args(target), "-c", str(constraints), f"{wheel}{extras}"], log)
    for own in deps.glob("portable_ep-*.whl"):
        own.unlink()
    pins = sorted("==".join(wheel_name_version(w)) for w in deps.glob("*.whl"))
    (deps / "requirements.txt").write_text("\n".join(pins) + "\n")
    if target.server:
        _pip(["download", "-q", "--no-deps", "-d", str(deps), *platform_args(target), server_pin], log)
    (deps / "server.txt").write_text(server_pin + "\n")
    stamp_file.write_text(stamp)
    log(f"wheelhouse {target.name}: {len(pins) + bool(target.server)} wheels, "
        f"{sum(w.stat().st_size for w in deps.glob('*.whl')) / 2**20:.0f} MiB")
    return context
