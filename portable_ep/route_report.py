"""``portable-ep doctor --repo REPO``: which route each model's provider chain would take, and what export measured.

Read from each model's config.pbtxt and the manifest of its newest version, without
loading anything: an operator sees before serving which providers would be skipped as
out of budget, which would be measured at load, and which are served unmeasured because
``allow_unmeasured`` is set (the rules: ``portable_ep.backends.routes``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from portable_ep.backends.artifacts import ModelFilesNotFound, find_model_artifacts, latest_version_dir
from portable_ep.backends.base import ProviderUnavailable
from portable_ep.backends.chain import parse_provider_chain
from portable_ep.backends.registry import default_registry
from portable_ep.backends.routes import OUT_OF_BUDGET, UNMEASURED, route_verdict
from portable_ep.python_backend.route_check import allow_unmeasured


def _config(model_dir: Path):
    from google.protobuf.json_format import MessageToDict

    from portable_ep.exporters.triton_config import parse_pbtxt
    from portable_ep.python_backend.model_config import parse_model_config

    raw = MessageToDict(parse_pbtxt((model_dir / "config.pbtxt").read_text()), preserving_proto_field_name=True)
    return parse_model_config(raw)


def _newest_version(model_dir: Path) -> Path:
    version = latest_version_dir(model_dir)
    if version is None:
        raise ModelFilesNotFound(f"{model_dir} has no version folder")
    return version


def _stored_precision(provider: str, precision: str) -> str:
    # bf16 is OpenVINO computing on the fp32 IR; "auto" is decided at load, show fp32's route.
    return "fp32" if precision in ("bf16", "auto") else precision


def repository_routes(repository) -> List[dict]:
    """One row per (model, provider in its chain): the variant it would read and the route's verdict."""
    registry = default_registry()
    rows = []
    for model_dir in sorted(p for p in Path(repository).iterdir() if (p / "config.pbtxt").is_file()):
        try:
            config = _config(model_dir)
            artifacts = find_model_artifacts(_newest_version(model_dir))
        except Exception as exc:  # noqa: BLE001 - one unreadable model is a row, not the end of the report
            rows.append({"model": model_dir.name, "provider": "", "file": "", "status": "unreadable",
                         "detail": (str(exc).splitlines() or [type(exc).__name__])[0]})
            continue
        precision = (config.parameters.get("precision") or "fp32").lower()
        allowed = allow_unmeasured(config.parameters)
        for name in parse_provider_chain(config.parameters.get("providers")):
            row = {"model": model_dir.name, "provider": name, "precision": precision, "file": "", "status": "", "detail": ""}
            try:
                formats = registry.get(name).variant_formats
            except ProviderUnavailable as exc:
                rows.append({**row, "status": "not installed", "detail": str(exc)})
                continue
            variant = artifacts.find(formats, _stored_precision(name, precision))
            if variant is None:
                rows.append({**row, "status": "no variant", "detail": f"no {'/'.join(formats)} {precision} variant"})
                continue
            row["file"] = variant.path.name
            if artifacts.manifest is None:
                rows.append({**row, "status": "no-golden-data", "detail": "a plain model file: served as given"})
                continue
            verdict = route_verdict(variant.routes, name, variant.precision, precision)
            row["status"] = verdict.status
            if verdict.status == OUT_OF_BUDGET:
                row["detail"] = "served (allow_unmeasured is set)" if allowed else "skipped at load: " + "; ".join(verdict.problems[:1])
            elif verdict.status == UNMEASURED:
                row["detail"] = "served unmeasured (allow_unmeasured is set)" if allowed else "measured against the golden data at load"
            rows.append(row)
    return rows
