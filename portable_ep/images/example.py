"""The example model repository every image serves: one tiny BERT bundle, two models.

    tiny_bert       fp32, dynamic batch and sequence; no provider chain, so each image's
                    PORTABLE_EP_PROVIDERS decides what serves it
    tiny_bert_int8  int8, batch 1 with npu.static_shapes: what an NPU can compile; the
                    other providers serve it too (they ignore npu.* options)

Exported once on the host (the export extra) with a fixed seed and reused while the
exporters' sources are unchanged; mounted read-only into every container.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

SEQUENCE = 16
# optimum exports BERT with token_type_ids as a third input.
STATIC_SHAPES = f"input_ids:1x{SEQUENCE},attention_mask:1x{SEQUENCE},token_type_ids:1x{SEQUENCE}"


def repository_options() -> dict:
    from portable_ep.exporters.repository import RepoOptions

    return {
        "tiny_bert": RepoOptions(),
        "tiny_bert_int8": RepoOptions(precision="int8", max_batch_size=1, parameters={"npu.static_shapes": STATIC_SHAPES}),
    }


def _sources_digest() -> str:
    import portable_ep.exporters as exporters

    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(Path(exporters.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _readable_by_all(root: Path) -> None:
    # Containers run as an unprivileged user: the bind-mounted tree must be world-readable.
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def build_example_repository(workdir: Path, log: Callable[[str], None] = print) -> Path:
    from portable_ep.exporters.bundle import ExportOptions, export_bundle
    from portable_ep.exporters.repository import add_to_repository
    from portable_ep.models.huggingface import build_tiny_bert_classifier

    repository, stamp = workdir / "models", workdir / ".stamp"
    digest = _sources_digest()
    if stamp.is_file() and stamp.read_text() == digest and all((repository / m / "config.pbtxt").is_file() for m in repository_options()):
        log(f"example repository: reusing {repository}")
        return repository
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log("example repository: exporting a tiny BERT classifier (seed 0, sequence 16) to fp32/fp16/int8 ONNX and IR")
    folder = build_tiny_bert_classifier(workdir / "tiny-bert", seed=0)
    bundle = export_bundle(folder, workdir / "bundle", ExportOptions(sequence_length=SEQUENCE, progress=False)).bundle
    for name, options in repository_options().items():
        add_to_repository(bundle, repository, name, options)
    _readable_by_all(workdir)
    stamp.write_text(digest)
    log(f"example repository: {repository} ({', '.join(repository_options())})")
    return repository
