"""Find the model files in a Triton version folder.

A version folder holds either a bundle (``manifest.json`` plus variants, see the
exporters) or a plain ``model.onnx`` or ``model.xml`` + ``model.bin``: Triton
operators write their own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class ModelArtifacts:
    root: Path
    onnx: Optional[Path] = None
    openvino_xml: Optional[Path] = None
    manifest: Optional[dict] = None

    def describe(self) -> str:
        found = [p.name for p in (self.onnx, self.openvino_xml) if p is not None]
        return ", ".join(found) if found else "no model file"


class ModelFilesNotFound(FileNotFoundError):
    pass


def find_model_artifacts(version_dir) -> ModelArtifacts:
    root = Path(version_dir)
    if not root.is_dir():
        raise ModelFilesNotFound(f"model version folder {root} does not exist")
    manifest = None
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    onnx = root / "model.onnx"
    xml = root / "model.xml"
    if xml.is_file() and not (root / "model.bin").is_file():
        raise ModelFilesNotFound(f"{xml} has no model.bin beside it; copy both OpenVINO IR files")
    if not xml.is_file() and (root / "openvino" / "model.xml").is_file():
        xml = root / "openvino" / "model.xml"
    artifacts = ModelArtifacts(
        root=root,
        onnx=onnx if onnx.is_file() else None,
        openvino_xml=xml if xml.is_file() else None,
        manifest=manifest,
    )
    if artifacts.onnx is None and artifacts.openvino_xml is None:
        present = sorted(p.name for p in root.iterdir())
        raise ModelFilesNotFound(
            f"no model.onnx or model.xml in {root} (found: {', '.join(present) or 'nothing'}); "
            "put the model file in the version folder or add a bundle with `portable-ep repo add`"
        )
    return artifacts
