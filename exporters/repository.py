"""``portable-ep repo add``: put a bundle into a Triton model repository.

The bundle is copied whole into ``REPO/NAME/<version>/`` (the backend reads its
manifest there) and ``config.pbtxt`` is built as a protobuf from the manifest's
signature, never from a string template.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from portable_ep.backends.artifacts import MANIFEST_NAME, is_servable
from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.manifest import read_manifest
from portable_ep.exporters.signature import Signature
from portable_ep.exporters.triton_config import TensorDecl, build_generation_config, build_model_config, config_to_pbtxt
from portable_ep.python_backend.mixed_lengths import find_padding_plan
from portable_ep.python_backend.model_loader import PRECISIONS as SERVING_PRECISIONS



@dataclass
class RepoOptions:
    max_batch_size: int = 8
    dynamic_batching_delay_us: Optional[int] = 1000
    instances: int = 1
    instance_kind: str = "KIND_CPU"
    providers: Optional[str] = None  # None: the backend's default chain
    precision: Optional[str] = None  # None: fp32
    version: int = 1
    overwrite: bool = False
    parameters: Optional[dict] = None  # extra config.pbtxt parameters, e.g. {"npu.static_shapes": "x:1x16"}


def _check(options: RepoOptions, manifest: dict, bundle: Path) -> None:
    if options.precision and options.precision not in SERVING_PRECISIONS:
        raise ExportError(f"unknown precision {options.precision!r}; choose one of {', '.join(SERVING_PRECISIONS)}")
    stored = {v["precision"] for v in manifest.get("variants", []) if is_servable(v)}
    wanted = options.precision or "fp32"
    if wanted in ("fp16", "int8", "int4") and wanted not in stored:
        raise ExportError(
            f"{bundle} has no {wanted} variant (it has {', '.join(sorted(stored))}); "
            f"re-export with --precisions fp32,{wanted}"
        )
    if options.max_batch_size < 0 or options.instances < 1 or options.version < 1:
        raise ExportError("max batch size must be >= 0, instances >= 1 and version >= 1")
    if options.dynamic_batching_delay_us is not None and options.dynamic_batching_delay_us < 0:
        raise ExportError("the dynamic batching delay must be >= 0 microseconds")


def unbatched_reason(manifest: dict) -> Optional[str]:
    """Why the bundle's model cannot batch (so its config gets max_batch_size 0), or None."""
    signature = Signature.from_dict(manifest["signature"])
    if signature.batched:
        return None
    reason = (manifest.get("batching") or {}).get("reason") or "its inputs and outputs have no shared symbolic first dim"
    return reason[len("shapes: "):] if reason.startswith("shapes: ") else reason


def _single_pass_config(name: str, manifest: dict, options: RepoOptions, notes: Optional[list]):
    signature = Signature.from_dict(manifest["signature"])
    max_batch = options.max_batch_size if signature.batched else 0
    reason = unbatched_reason(manifest)
    if reason and notes is not None:
        notes.append(f"max_batch_size 0: the model cannot batch ({reason}); each request is one sample "
                     "with the model's own shape")
    # Inputs the backend can pad to a common length (a masked sequence axis) may arrive in one batch.
    plan, _ = find_padding_plan({s.name: s.shape for s in signature.inputs}, {s.name: s.shape for s in signature.outputs},
                                {s.name: s.dtype for s in signature.inputs}, batched=max_batch > 0)
    ragged = set(plan.input_axes) if plan is not None else set()
    decls = lambda specs: [TensorDecl(s.name, s.dtype, signature.triton_dims(s), s.name in ragged) for s in specs]  # noqa: E731
    try:
        return build_model_config(
            name, decls(signature.inputs), decls(signature.outputs), max_batch_size=max_batch,
            dynamic_batching_delay_us=options.dynamic_batching_delay_us if max_batch else None,
            instances=options.instances, instance_kind=options.instance_kind, providers=options.providers,
            precision=options.precision, parameters=options.parameters,
        )
    except ValueError as exc:  # an element type Triton has no data type for (float8, int4, ...)
        raise ExportError(f"model {name!r} cannot be served: {exc}") from None


def add_to_repository(bundle, repository, name: str, options: Optional[RepoOptions] = None,
                      notes: Optional[list] = None) -> Path:
    """Copy ``bundle`` into ``repository/name`` with its config.pbtxt; ``notes`` gets what the user should know."""
    options = options or RepoOptions()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    _check(options, manifest, bundle)
    if manifest.get("task") == "text-generation":
        config = build_generation_config(name, instance_kind=options.instance_kind, providers=options.providers,
                                         precision=options.precision, parameters=options.parameters)
        if notes is not None and (options.instances != 1 or options.max_batch_size != RepoOptions.max_batch_size):
            notes.append("a generative model runs one instance that batches sequences between decode steps; "
                         "--instances and --max-batch-size do not apply (set parameter generation.max_batch)")
    else:
        config = _single_pass_config(name, manifest, options, notes)
    model_dir = Path(repository) / name
    version_dir = model_dir / str(options.version)
    if version_dir.exists() and not options.overwrite:
        raise ExportError(f"{version_dir} already exists; pass --overwrite to replace it or --version N for a new version")
    model_dir.mkdir(parents=True, exist_ok=True)
    # Copy beside the destination, then swap in: a failed copy leaves the old version serving.
    staging = Path(tempfile.mkdtemp(prefix=f".{options.version}.partial-", dir=model_dir))
    try:
        shutil.copytree(bundle, staging, dirs_exist_ok=True)
        if not (staging / MANIFEST_NAME).is_file():
            raise ExportError(f"copying {bundle} into {model_dir} lost its manifest")
        if version_dir.exists():
            shutil.rmtree(version_dir)
        staging.rename(version_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    (model_dir / "config.pbtxt").write_text(config_to_pbtxt(config))
    return model_dir
