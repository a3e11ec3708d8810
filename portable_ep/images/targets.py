"""``images/targets.toml``: what each hardware target's image is built from and checked with."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's venv is 3.11
    import tomli as tomllib

KNOWN_TARGETS = ("cpu", "openvino", "npu", "cuda", "rocm")
# Bases under this name are made on this machine with debootstrap (images/base.py), not pulled.
LOCAL_BASE_PREFIX = "portable-ep/base:"
REQUIRED = ("dockerfile", "base_image", "python", "glibc", "extras", "providers", "provider", "models")


class TargetsError(ValueError):
    """The targets file or a --targets selection is wrong: one line naming the fix."""


@dataclass(frozen=True)
class Target:
    name: str
    dockerfile: Path
    base_image: str
    python: str
    glibc: str
    extras: List[str]
    providers: str
    provider: str
    models: List[str]
    server: bool = True
    gpus: bool = False
    devices: List[str] = field(default_factory=list)
    runner: List[str] = field(default_factory=list)
    p99_ms_at_1: Optional[float] = None
    kube_resource: Optional[str] = None
    kube_preferred_labels: List[str] = field(default_factory=list)

    @property
    def local_base(self) -> bool:
        """The base is made on this machine with debootstrap, not pulled."""
        return self.base_image.startswith(LOCAL_BASE_PREFIX)

    def image_tag(self, version: str) -> str:
        return f"portable-ep/{self.name}:{version}"


def default_images_dir() -> Path:
    """images/ of the checkout this package runs from, else of the working directory."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "images" / "targets.toml").is_file():
            return root / "images"
    raise TargetsError("images/targets.toml not found: run from a portable-ep checkout or pass --images-dir")


def _target(name: str, entry: dict, images_dir: Path) -> Target:
    missing = [key for key in REQUIRED if key not in entry]
    if missing:
        raise TargetsError(f"target {name!r} lacks {', '.join(missing)} in targets.toml")
    unknown = sorted(set(entry) - set(Target.__dataclass_fields__) - {"name"})
    if unknown:
        raise TargetsError(f"target {name!r}: unknown key(s) {', '.join(unknown)} in targets.toml")
    dockerfile = images_dir / entry["dockerfile"]
    if not dockerfile.is_file():
        raise TargetsError(f"target {name!r}: {dockerfile} does not exist")
    if entry["provider"] not in [p.strip() for p in entry["providers"].split(",")]:
        raise TargetsError(f"target {name!r}: provider {entry['provider']!r} is not in its chain {entry['providers']!r}")
    for key in ("extras", "models", "devices", "runner", "kube_preferred_labels"):
        if key in entry and not (isinstance(entry[key], list) and all(isinstance(v, str) for v in entry[key])):
            raise TargetsError(f"target {name!r}: {key} must be a list of strings")
    if not entry["models"]:
        raise TargetsError(f"target {name!r}: models is empty; name at least one model to check")
    values = {k: v for k, v in entry.items() if k != "dockerfile"}
    return Target(name=name, dockerfile=dockerfile, **values)


def load_targets(path: Optional[Path] = None) -> Dict[str, Target]:
    path = Path(path) if path else default_images_dir() / "targets.toml"
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise TargetsError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetsError(f"{path} is not valid TOML: {exc}") from None
    entries = data.get("target")
    if not isinstance(entries, dict) or not entries:
        raise TargetsError(f"{path} has no [target.NAME] tables")
    return {name: _target(name, entry, path.parent) for name, entry in entries.items()}


def select(targets: Dict[str, Target], names: Optional[str]) -> List[Target]:
    """``"cpu,npu"`` → those targets in that order; None or empty → all of them."""
    if not names or not names.strip():
        return list(targets.values())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in targets]
    if unknown:
        raise TargetsError(f"unknown target(s) {', '.join(unknown)}; the targets file has {', '.join(targets)}")
    return [targets[n] for n in dict.fromkeys(wanted)]


def parse_overrides(pairs: Sequence[str]) -> Dict[str, str]:
    """``["cuda=registry.local/triton:24.10-py3"]`` → {"cuda": "registry.local/triton:24.10-py3"}."""
    result = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise TargetsError(f"--base {pair!r}: use TARGET=IMAGE")
        result[name.strip()] = value.strip()
    return result
