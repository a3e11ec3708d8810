"""``portable-ep repo add``: put a bundle into a Triton model repository.

The bundle's files are copied into ``REPO/NAME/<version>/`` (the backend reads its
manifest there) and ``config.pbtxt`` is built as a protobuf from the manifest's
signature, never from a string template.

A bundle is data from elsewhere: it is checked as the server would take it
(``backends/bundle_paths.py``) before anything is written, only the files its manifest
lists are copied (as regular files, links never followed), and ``NAME`` must be a plain
model name, so nothing is written or deleted outside ``REPO``.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from portable_ep.backends.artifacts import MANIFEST_NAME, is_servable
from portable_ep.backends.bundle_paths import BundlePathError, check_manifest_paths, listed_files, unlisted_files
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


# A model name is one folder of the repository and Triton's name for the model in URLs: printable, no path
# separator, not hidden (Triton skips dot-folders), no '..'.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")


def check_model_name(name: str) -> None:
    """Raise unless ``name`` is a model name Triton accepts as one folder of the repository."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ExportError(
            f"--name {name!r} refused: a model name is one folder of the repository (letters, digits, '_', '-' and '.', "
            "not starting with '.', no '/' or '..', at most 255 characters)"
        )


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


def copy_listed_files(bundle: Path, dest: Path, files: List[str]) -> None:
    """Copy each of ``files`` (relative, already confined) from ``bundle`` into ``dest`` as a regular file.

    The source is opened without following a link (O_NOFOLLOW), so a link swapped in after
    the bundle was checked is refused rather than read.
    """
    for relative in files:
        source, target = bundle / relative, dest / relative
        try:  # O_NONBLOCK: a FIFO swapped in opens at once (and is refused below) instead of hanging the copy
            fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise ExportError(f"{bundle / MANIFEST_NAME} lists {relative} but the bundle has no such file; "
                              "copy the whole bundle or re-export it") from None
        except OSError as exc:
            raise ExportError(f"bundle {bundle}: file {relative!r} refused: cannot be opened as a regular file "
                              f"({exc.strerror})") from None
        with os.fdopen(fd, "rb") as reader:
            if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
                raise ExportError(f"bundle {bundle}: file {relative!r} refused: not a regular file")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
        shutil.copystat(source, target, follow_symlinks=False)
    # Folders get the bundle's modes, as a whole-folder copy would give them (a server running as another user reads them).
    for folder in sorted({Path(relative).parent for relative in files}, key=lambda p: len(p.parts), reverse=True):
        shutil.copystat(bundle / folder, dest / folder, follow_symlinks=False)


def add_to_repository(bundle, repository, name: str, options: Optional[RepoOptions] = None,
                      notes: Optional[list] = None) -> Path:
    """Copy ``bundle`` into ``repository/name`` with its config.pbtxt; ``notes`` gets what the user should know."""
    options = options or RepoOptions()
    check_model_name(name)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    try:
        check_manifest_paths(bundle, manifest)
    except BundlePathError as exc:
        raise ExportError(f"{exc}; the bundle was not added") from None
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
    for folder in (model_dir, version_dir):
        if folder.is_symlink():
            raise ExportError(f"{folder} refused: it is a symbolic link; repo add writes and replaces real folders only")
    if version_dir.exists() and not options.overwrite:
        raise ExportError(f"{version_dir} already exists; pass --overwrite to replace it or --version N for a new version")
    left_out = unlisted_files(bundle, manifest)
    if left_out and notes is not None:
        notes.append(f"not copied (not listed in {MANIFEST_NAME}): {', '.join(left_out)}")
    model_dir.mkdir(parents=True, exist_ok=True)
    # Copy beside the destination, then swap in: a failed copy leaves the old version serving.
    staging = Path(tempfile.mkdtemp(prefix=f".{options.version}.partial-", dir=model_dir))
    try:
        copy_listed_files(bundle, staging, sorted(listed_files(manifest)) + [MANIFEST_NAME])
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
