"""Find the model files in a Triton version folder.

A version folder holds either a bundle (``manifest.json`` plus variants, written by
``portable-ep export``) or a plain ``model.onnx`` or ``model.xml`` + ``model.bin``:
Triton operators write their own. A bundle is confined to its folder
(``portable_ep.backends.bundle_paths``): a manifest path that leaves it, or a link or
special file inside it, is refused before anything is read; a plain folder is the
operator's own and is taken as it is. Either way the result is a list of
:class:`Variant` s, and a provider asks for the one it can run with
:meth:`ModelArtifacts.find`.

The manifest fields read here (the exporters write more, see
``portable_ep.exporters.manifest``)::

    {"schema_version": 1,
     "variants": [{"format": "onnx" | "openvino", "precision": "fp32" | "fp16" | "int8" | "int4",
                   "file": "model.int8.onnx",          # relative to the bundle
                   "within_budget": true,              # accuracy vs the golden outputs
                   "accuracy": {...}}, ...]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Tuple

from portable_ep.backends.routes import routes_of_entry

from portable_ep.backends.bundle_paths import check_manifest_paths, confined_path

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
FORMATS = ("onnx", "openvino")
# int4: weight-only (MatMulNBits / NNCF group-wise), written for generative models.
VARIANT_PRECISIONS = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class Variant:
    format: str  # "onnx" or "openvino"
    precision: str  # the precision the weights are stored in: fp32, fp16 or int8
    path: Path
    # None for a plain model file, else what the exporter measured against the golden outputs.
    within_budget: Optional[bool] = None
    accuracy: dict = field(default_factory=dict, compare=False, hash=False)
    #: How an int8 variant was quantized (manifest "quantization": static-qdq, dynamic, dynamic-fused, ...).
    quantization: str = field(default="", compare=False)
    #: What export measured per provider reading this file (manifest "routes"; portable_ep.backends.routes).
    routes: Mapping[str, Mapping] = field(default_factory=dict, compare=False, hash=False)

    def describe(self) -> str:
        return f"{self.format} {self.precision} ({self.path.name})"


@dataclass(frozen=True)
class ModelArtifacts:
    root: Path
    variants: Tuple[Variant, ...] = ()
    manifest: Optional[dict] = field(default=None, compare=False, hash=False)

    def find(self, formats: Sequence[str], precision: str) -> Optional[Variant]:
        """The first variant in ``formats`` order stored in ``precision``, if any."""
        for fmt in formats:
            for variant in self.variants:
                if variant.format == fmt and variant.precision == precision:
                    return variant
        return None

    def precisions(self, formats: Iterable[str]) -> list:
        formats = tuple(formats)
        return sorted({v.precision for v in self.variants if v.format in formats}, key=VARIANT_PRECISIONS.index)

    def missing(self, provider: str, formats: Sequence[str], precision: str) -> str:
        """One line for a provider that finds no variant it can run."""
        have = ", ".join(v.describe() for v in self.variants) or "no model file"
        return (
            f"{provider} runs {'/'.join(formats)} models and {self.root} has no {precision} one "
            f"(it has: {have}); export that precision with `portable-ep export --precisions {precision}` "
            "or choose another precision"
        )

    # Plain fp32 files, for callers that only deal with hand-written repositories.
    @property
    def onnx(self) -> Optional[Path]:
        variant = self.find(("onnx",), "fp32")
        return variant.path if variant else None

    @property
    def openvino_xml(self) -> Optional[Path]:
        variant = self.find(("openvino",), "fp32")
        return variant.path if variant else None

    def describe(self) -> str:
        if self.manifest is not None:
            return f"bundle {self.root} ({', '.join(v.describe() for v in self.variants)})"
        return ", ".join(v.path.name for v in self.variants) or "no model file"


class ModelFilesNotFound(FileNotFoundError):
    pass


def is_servable(entry: dict) -> bool:
    """A manifest variant with a file to load: not ``status: failed``, not dropped for its budget."""
    return entry.get("status", "ok") != "failed" and bool(entry.get("file"))


def _variants_from_manifest(root: Path, manifest: dict) -> Tuple[Variant, ...]:
    version = manifest.get("schema_version")
    if version != MANIFEST_SCHEMA_VERSION:
        raise ModelFilesNotFound(
            f"{root / MANIFEST_NAME} has schema_version {version!r}; this portable-ep reads "
            f"{MANIFEST_SCHEMA_VERSION} -- re-export the bundle with this version"
        )
    variants = []
    for index, entry in enumerate(manifest.get("variants") or []):
        if isinstance(entry, dict) and not is_servable(entry):
            continue  # recorded by export as failed or dropped out of budget: nothing to load
        try:
            fmt, precision, file = entry["format"], entry["precision"], entry["file"]
        except (KeyError, TypeError):
            raise ModelFilesNotFound(f"{root / MANIFEST_NAME}: variants[{index}] lacks format, precision or file") from None
        path = confined_path(root, file, f"variants[{index}].file")
        if not path.is_file():
            raise ModelFilesNotFound(f"{root / MANIFEST_NAME} lists {file} but the bundle has no such file; copy the whole bundle")
        if fmt == "openvino" and not path.with_suffix(".bin").is_file():
            raise ModelFilesNotFound(f"{path} has no {path.with_suffix('.bin').name} beside it; copy the whole bundle")
        variants.append(Variant(fmt, precision, path, entry.get("within_budget"), entry.get("accuracy") or {},
                                entry.get("quantization") or "", routes_of_entry(entry)))
    if not variants:
        raise ModelFilesNotFound(f"{root / MANIFEST_NAME} lists no variant that export could build; re-export the model")
    return tuple(variants)


def _plain_variants(root: Path) -> Tuple[Variant, ...]:
    variants = []
    onnx = root / "model.onnx"
    if onnx.is_file():
        variants.append(Variant("onnx", "fp32", onnx))
    xml = root / "model.xml"
    if xml.is_file():
        if not (root / "model.bin").is_file():
            raise ModelFilesNotFound(f"{xml} has no model.bin beside it; copy both OpenVINO IR files")
        variants.append(Variant("openvino", "fp32", xml))
    return tuple(variants)


def find_model_artifacts(version_dir) -> ModelArtifacts:
    root = Path(version_dir)
    if not root.is_dir():
        raise ModelFilesNotFound(f"model version folder {root} does not exist")
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        confined_path(root, MANIFEST_NAME, "manifest")  # a link is not read, not even to report bad JSON
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelFilesNotFound(f"{manifest_path} is not valid JSON ({exc}); re-export the bundle") from None
        if not isinstance(manifest, dict):
            raise ModelFilesNotFound(f"{manifest_path} is not a JSON object; re-export the bundle")
        # A bundle is data from elsewhere: every path it names stays inside it, and it holds no links.
        check_manifest_paths(root, manifest)
        return ModelArtifacts(root=root, variants=_variants_from_manifest(root, manifest), manifest=manifest)
    variants = _plain_variants(root)
    if not variants:
        present = sorted(p.name for p in root.iterdir())
        raise ModelFilesNotFound(
            f"no model.onnx or model.xml in {root} (found: {', '.join(present) or 'nothing'}); "
            "put the model file in the version folder or add a bundle with `portable-ep repo add`"
        )
    return ModelArtifacts(root=root, variants=variants)


def latest_version_dir(model_dir) -> Optional[Path]:
    """The highest numbered version folder of a model (Triton's default version policy serves the latest)."""
    model_dir = Path(model_dir)
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, key=lambda p: int(p.name)) if versions else None
