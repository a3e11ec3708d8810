"""manifest.json: what the bundle holds and how accurate each variant measured (docs/bundle.md)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable

from portable_ep.backends.artifacts import MANIFEST_NAME, MANIFEST_SCHEMA_VERSION
from portable_ep.backends.integrity import sha256_of  # noqa: F401  (bundle writers import it from here)

TOOLS = ("portable-ep", "onnx", "onnxruntime", "openvino", "nncf", "torch", "transformers")


def variant_files(root: Path, file: str) -> Iterable[Path]:
    """The files one variant is made of: an IR is its .xml and .bin; ONNX may have external data."""
    path = root / file
    yield path
    if path.suffix == ".xml":
        yield path.with_suffix(".bin")
    elif path.with_name(path.name + ".data").is_file():
        yield path.with_name(path.name + ".data")


def file_entry(root: Path, file: str) -> dict:
    paths = list(variant_files(root, file))
    entry = {"file": file, "sha256": sha256_of(paths[0]), "bytes": sum(p.stat().st_size for p in paths)}
    if len(paths) > 1:
        entry["weights_sha256"] = sha256_of(paths[1])
        entry["weights_file"] = str(paths[1].relative_to(root))
    return entry


def tool_versions(names: Iterable[str] = TOOLS) -> Dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_manifest(root: Path, manifest: dict) -> Path:
    manifest = {"schema_version": MANIFEST_SCHEMA_VERSION, **manifest}
    path = root / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(bundle) -> dict:
    from portable_ep.exporters.errors import ExportError

    path = Path(bundle) / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{bundle} is not a bundle: it has no {MANIFEST_NAME} (make one with `portable-ep export`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise ExportError(f"{path} has schema_version {manifest.get('schema_version')!r}; this portable-ep reads {MANIFEST_SCHEMA_VERSION}")
    return manifest
