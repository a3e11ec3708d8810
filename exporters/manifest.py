"""manifest.json: what the bundle holds and how accurate each variant measured (docs/bundle.md)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List

from portable_ep.backends.artifacts import MANIFEST_NAME, MANIFEST_SCHEMA_VERSION
from portable_ep.backends.integrity import sha256_of  # noqa: F401  (bundle writers import it from here)

TOOLS = ("portable-ep", "onnx", "onnxruntime", "openvino", "nncf", "torch", "transformers")


def onnx_external_data(path: Path) -> List[Path]:
    """The external data files an ONNX graph reads, whatever their names (``model.onnx.data``, optimum's
    ``model.onnx_data``, one file per tensor), in the order the graph first names them."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors
    except ImportError:  # no onnx to read the graph with: the names portable-ep and optimum write
        return [p for p in (path.with_name(path.name + ".data"), path.with_name(path.name + "_data")) if p.is_file()]
    model = onnx.load(str(path), load_external_data=False)
    found: List[Path] = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        if not location or location.startswith("/") or ".." in location.split("/"):
            continue  # ONNX Runtime refuses data outside the graph's folder; such a graph fails at its measurement
        data = path.parent / location
        if data not in found and data.is_file():
            found.append(data)
    return found


def variant_files(root: Path, file: str) -> Iterable[Path]:
    """The files one variant is made of: an IR is its .xml and .bin; an ONNX graph may have external data."""
    path = root / file
    yield path
    if path.suffix == ".xml":
        yield path.with_suffix(".bin")
    elif path.suffix == ".onnx":
        yield from onnx_external_data(path)


def file_entry(root: Path, file: str) -> dict:
    """A variant's manifest fields: its file, sha256 and bytes; the weights beside it as ``weights_file`` (one
    file, an IR's .bin or an ONNX graph's external data) or ``weights_files`` (several: path -> sha256)."""
    paths = list(variant_files(root, file))
    entry = {"file": file, "sha256": sha256_of(paths[0]), "bytes": sum(p.stat().st_size for p in paths)}
    if len(paths) == 2:
        entry["weights_sha256"] = sha256_of(paths[1])
        entry["weights_file"] = paths[1].relative_to(root).as_posix()
    elif len(paths) > 2:
        entry["weights_files"] = {p.relative_to(root).as_posix(): sha256_of(p) for p in paths[1:]}
    return entry


def local_paths_removed(value, roots: Iterable[Path]):
    """``value`` (a manifest, or any part of one) with every mention of the exporting machine's ``roots``
    (absolute folders or files) replaced by what follows them, or by its last name where a root is named
    alone: a bundle records no absolute path of the machine it was made on (a tool's error message quoting
    the work folder, say)."""
    prefixes = sorted({str(Path(root)) for root in roots if str(root) not in ("", "/", ".")}, key=len, reverse=True)
    # A prefix counts where a path component ends: "/home/u" is in "/home/u/x" and "/home/u", not in "/home/uv".
    pattern = re.compile("|".join(f"{re.escape(prefix)}(?:/|(?![^\\s'\":;,)]))" for prefix in prefixes)) if prefixes else None

    def clean(item):
        if isinstance(item, str):
            if pattern is None:
                return item
            # "/work/x/model.onnx" -> "model.onnx"; a root named on its own -> its last name ("/src/a.onnx" -> "a.onnx")
            return pattern.sub(lambda m: "" if m.group(0).endswith("/") else (Path(m.group(0)).name or "."), item)
        if isinstance(item, dict):
            return {clean(k): clean(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        return item

    return clean(value)


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

    from portable_ep.backends.bundle_paths import confined_path

    path = confined_path(Path(bundle), MANIFEST_NAME, "manifest")  # a link to a file elsewhere is not read
    if not path.is_file():
        raise ExportError(f"{bundle} is not a bundle: it has no {MANIFEST_NAME} (make one with `portable-ep export`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise ExportError(f"{path} is not a JSON object; re-export the bundle")
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise ExportError(f"{path} has schema_version {manifest.get('schema_version')!r}; this portable-ep reads {MANIFEST_SCHEMA_VERSION}")
    return manifest
