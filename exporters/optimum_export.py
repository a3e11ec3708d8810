"""Export a local Hugging Face folder to ONNX with Hugging Face optimum, and compute its golden outputs.

optimum (``optimum-onnx``) knows, per architecture and task, which inputs a model takes,
which outputs to keep and which axes are dynamic, for far more architectures than the
hand-written path in exporters/huggingface.py. This module uses it for one fp32 .onnx:

    onnx = export_onnx(folder, "question-answering", out / "model.onnx")
    onnx.input_names   -> ["input_ids", "attention_mask"]
    onnx.output_names  -> ["start_logits", "end_logits"]
    golden = pytorch_outputs(folder, "question-answering", feeds, onnx.output_names)

Nothing is fetched from the hub: the folder must hold config.json and the weights.
Needs ``optimum-onnx``, torch and transformers (``portable-ep[export]``).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from portable_ep.exporters.errors import ExportError

# The optimum task names this module claims, each covered by a tiny model in
# models/hf_zoo.py and checked against PyTorch in tests/unit/test_optimum_export.py.
SUPPORTED_TASKS: Tuple[str, ...] = (
    "text-classification",
    "token-classification",
    "question-answering",
    "fill-mask",
    "feature-extraction",
    "image-classification",
    "object-detection",
    "semantic-segmentation",
    "audio-classification",
)

# Outputs whose LAST axis indexes classes, vocabulary entries or token positions, so that
# "same arg-max as PyTorch" is a meaningful accuracy check. Segmentation logits are left
# out on purpose: their class axis is 1 (batch, classes, h, w), the last axis is width.
_LOGITS = {
    "text-classification": ("logits",),
    "token-classification": ("logits",),
    "question-answering": ("start_logits", "end_logits"),
    "fill-mask": ("logits",),
    "feature-extraction": (),
    "image-classification": ("logits",),
    "object-detection": ("logits",),  # (batch, queries, classes + 1); pred_boxes are coordinates
    "semantic-segmentation": (),
    "audio-classification": ("logits",),
}

TEXT_SEQUENCE_LENGTH = 128  # suggested when the model allows it: long enough to look like real text
IMAGE_SIZE = 224  # when neither the preprocessor nor the config says
AUDIO_SECONDS = 1  # one second of audio at the feature extractor's sampling rate
# Models up to this size are written as one .onnx file (protobuf's 2 GiB limit, with margin).
SINGLE_FILE_LIMIT = 1_800_000_000


@dataclass
class OptimumOnnx:
    """What export_onnx wrote, and what a consumer needs to feed and judge it."""

    path: Path  # the fp32 .onnx; a sibling <name>.data holds the weights only above SINGLE_FILE_LIMIT
    input_names: List[str]
    output_names: List[str]
    logits_outputs: Tuple[str, ...]  # outputs where top-1 agreement along the last axis is meaningful
    dim_sizes: Dict[str, int] = field(default_factory=dict)  # sizes for the symbolic non-batch input dims
    opset: int = 0


def _tasks_manager():
    try:
        # Importing model_configs registers every architecture's ONNX config with the
        # TasksManager; without it the manager knows no model types at all.
        import optimum.exporters.onnx.model_configs  # noqa: F401
        from optimum.exporters.tasks import TasksManager
    except ImportError as exc:
        raise ExportError(f"the optimum export path needs optimum-onnx ({exc}); pip install 'portable-ep[export]'") from None
    return TasksManager


def _read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder} has no config.json: not a Hugging Face model folder (save one with model.save_pretrained(DIR))")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{config_path} is not valid JSON ({exc}); re-save the model with save_pretrained") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ExportError(f"{config_path} has no model_type; re-save the model with a recent transformers save_pretrained")
    return config


def _normalize_task(task: str) -> str:
    # optimum accepts synonyms (sequence-classification, masked-lm, ...); we report canonical names.
    return _tasks_manager().map_from_synonym(task)


def supported_tasks_for(folder) -> List[str]:
    """optimum's ONNX tasks for the folder's model_type (all of them, not only SUPPORTED_TASKS); [] when unknown."""
    model_type = _read_config(Path(folder))["model_type"]
    try:
        tasks = _tasks_manager().get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except KeyError:  # optimum raises KeyError for a model type it has no ONNX config for
        return []
    return sorted(tasks)


def _check_task(folder: Path, task: str) -> str:
    config = _read_config(folder)
    canonical = _normalize_task(task)
    if canonical not in SUPPORTED_TASKS:
        raise ExportError(f"task {task!r} is not one the optimum export path handles; use one of {', '.join(SUPPORTED_TASKS)}")
    model_type = config["model_type"]
    optimum_tasks = supported_tasks_for(folder)
    if not optimum_tasks:
        raise ExportError(
            f"optimum's ONNX exporter does not know model_type {model_type!r} ({folder}); "
            f"export it to .onnx yourself and pass the .onnx file instead"
        )
    if canonical not in optimum_tasks:
        usable = [t for t in optimum_tasks if t in SUPPORTED_TASKS] or optimum_tasks
        raise ExportError(
            f"optimum cannot export a {model_type} model for task {canonical}; "
            f"pass --task one of {', '.join(usable)} (what optimum supports for {model_type})"
        )
    return canonical


def _load_model(folder: Path, task: str):
    """The PyTorch model for ``task``, loaded the way optimum would but offline, fp32 and with eager attention.

    Eager attention traces to plain MatMul/Softmax/Add-mask subgraphs, the pattern ONNX
    Runtime's and OpenVINO's fusions and quantizers expect. (SDPA, transformers' default,
    also exports and matches here, but adds Equal/Where/Expand mask handling and a Sqrt scale.)
    One loader for export and golden outputs, so both run the very same module.
    """
    import torch

    manager = _tasks_manager()
    model_type = _read_config(folder)["model_type"]
    model_class = manager.get_model_class_for_task(task, "pt", model_type=model_type, library="transformers")
    try:
        model, info = model_class.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager",
                                                  output_loading_info=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"cannot load {folder} as {model_class.__name__} for task {task}: {first}") from None
    missing = list(info.get("missing_keys") or ())
    if missing and task != "feature-extraction":
        # transformers fills absent weights with random ones and only logs it: asking for a task
        # whose head the checkpoint lacks (fill-mask from a classifier) would export noise.
        # feature-extraction is spared: any head checkpoint holds the base model, at most not a pooler.
        architectures = ", ".join(_read_config(folder).get("architectures") or ()) or "unknown"
        raise ExportError(
            f"{folder} ({architectures}) has no weights for {len(missing)} parameters the {task} model "
            f"{type(model).__name__} needs (e.g. {missing[0]}); pass the --task its architecture was trained for"
        )
    # optimum's own loader does this too (e.g. sets config attributes some ONNX configs read).
    manager.standardize_model_attributes(model, library_name="transformers")
    model = model.eval().to(torch.float32)
    return model


def _write_single_file(src: Path, dest: Path) -> None:
    """Copy optimum's model.onnx to dest, pulling any external data into the file when it is small enough.

    One file is simpler to move into a bundle; only a model near protobuf's 2 GiB limit keeps
    its weights beside it (dest.name + ".data").
    """
    import onnx

    total = sum(p.stat().st_size for p in src.parent.iterdir() if p.is_file() and p.name.startswith(src.stem))
    model = onnx.load(str(src), load_external_data=True)
    if total < SINGLE_FILE_LIMIT:
        onnx.save_model(model, str(dest))
    else:
        onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dest.name + ".data", size_threshold=1024)


def _onnx_dims(path: Path) -> Dict[str, List]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = {}
    for value in model.graph.input:
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = [d.dim_param if d.dim_param else d.dim_value for d in shape]
    return dims


def _suggested_dims(folder: Path, task: str, input_dims: Mapping[str, Sequence]) -> Dict[str, int]:
    """Sizes for the symbolic non-batch dims the ONNX inputs use (optimum names them
    sequence_length, num_channels, height, width), taken from the folder's configs."""
    config = _read_config(folder)
    preprocessor = {}
    pre_path = folder / "preprocessor_config.json"
    if pre_path.is_file():
        try:
            preprocessor = json.loads(pre_path.read_text())
        except (OSError, ValueError):
            preprocessor = {}
    names = {d for dims in input_dims.values() for d in dims[1:] if isinstance(d, str)}
    sizes: Dict[str, int] = {}
    if "num_channels" in names:
        sizes["num_channels"] = int(config.get("num_channels", 3))
    if {"height", "width"} & names:
        height, width = _image_size(config, preprocessor)
        sizes.update(height=height, width=width)
    if "sequence_length" in names:
        if task.startswith("audio") or "input_values" in input_dims:
            # input_values is raw audio: (batch, samples)
            sizes["sequence_length"] = int(preprocessor.get("sampling_rate", 16000)) * AUDIO_SECONDS
        else:
            sizes["sequence_length"] = _text_length(folder, config)
    return sizes


def _image_size(config: dict, preprocessor: dict) -> Tuple[int, int]:
    # The preprocessor is what resizes real images, so it wins over the config's training size;
    # a center crop, when on, is the last step and so what the model sees.
    size = preprocessor.get("size")
    if preprocessor.get("do_center_crop") and preprocessor.get("crop_size"):
        size = preprocessor["crop_size"]
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    elif isinstance(size, int):
        return size, size
    image_size = config.get("image_size")
    if isinstance(image_size, int):
        return image_size, image_size
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        return int(image_size[0]), int(image_size[1])
    return IMAGE_SIZE, IMAGE_SIZE


def _text_length(folder: Path, config: dict) -> int:
    limits = [TEXT_SEQUENCE_LENGTH]
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models number positions from pad_token_id + 1.
        offset = (config.get("pad_token_id") or 0) + 1 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0
        limits.append(positions - offset)
    tok_path = folder / "tokenizer_config.json"
    if tok_path.is_file():
        try:
            max_len = json.loads(tok_path.read_text()).get("model_max_length")
            if isinstance(max_len, int) and max_len > 0:
                limits.append(max_len)
        except (OSError, ValueError):
            pass
    return max(1, min(limits))


def export_onnx(folder, task: str, dest, opset: Optional[int] = None) -> OptimumOnnx:
    """Export ``folder`` for ``task`` to the fp32 ONNX file ``dest`` with optimum's exporter.

    ``dest`` is the .onnx path to write (a directory, or a path without .onnx, gets
    ``model.onnx`` inside). ``opset`` None takes optimum's default for the architecture.
    """
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.utils.save_utils import maybe_load_preprocessors

    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"source {folder} is not a folder; give a Hugging Face model folder (config.json + weights)")
    task = _check_task(folder, task)
    dest = Path(dest)
    if dest.suffix != ".onnx":
        dest = dest / "model.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)

    model = _load_model(folder, task)
    # optimum writes a folder (model.onnx, config, tokenizer copies); work next to dest and keep only the graph.
    work = Path(tempfile.mkdtemp(prefix=f".{dest.stem}.optimum-", dir=dest.parent))
    try:
        with warnings.catch_warnings():
            # TracerWarnings (a Python branch on a shape became a constant) and transformers'
            # deprecation notices for the processors optimum loads say nothing a user can act on.
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            onnx_export_from_model(
                model, work, opset=opset, task=task,
                preprocessors=maybe_load_preprocessors(str(folder)),  # static sizes some ONNX configs read
                do_validation=False,  # the caller compares with pytorch_outputs on its own inputs
                no_post_process=True,  # post-processing only merges decoders; encoders have none
            )
        written = work / "model.onnx"
        if not written.is_file():
            raise ExportError(f"optimum wrote no model.onnx for {folder} ({task}); files: {sorted(p.name for p in work.iterdir())}")
        _write_single_file(written, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import onnx

    graph = onnx.load(str(dest), load_external_data=False)
    input_names = [v.name for v in graph.graph.input]
    output_names = [v.name for v in graph.graph.output]
    used_opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OptimumOnnx(
        path=dest,
        input_names=input_names,
        output_names=output_names,
        logits_outputs=tuple(name for name in _LOGITS.get(task, ()) if name in output_names),
        dim_sizes=_suggested_dims(folder, task, _onnx_dims(dest)),
        opset=used_opset,
    )


def pytorch_outputs(folder, task: str, feeds: Mapping[str, np.ndarray], output_names: Sequence[str],
                    batch: int = 8) -> Dict[str, np.ndarray]:
    """Golden outputs: the PyTorch model run on ``feeds`` (keyed by ONNX input names, which are
    the forward() keyword names), ``batch`` rows at a time, as {ONNX output name: array}."""
    import torch

    folder = Path(folder)
    task = _check_task(folder, task)
    model = _load_model(folder, task)
    rows = len(next(iter(feeds.values())))
    chunks: Dict[str, List[np.ndarray]] = {name: [] for name in output_names}
    with torch.inference_mode():
        for start in range(0, rows, max(1, batch)):
            kwargs = {name: torch.from_numpy(np.ascontiguousarray(array[start:start + batch])) for name, array in feeds.items()}
            result = model(**kwargs, return_dict=True)
            for name in output_names:
                # optimum names ONNX outputs after the ModelOutput fields (logits, start_logits, pred_boxes, ...).
                if name not in result or result[name] is None:
                    raise ExportError(f"the PyTorch model returns no {name!r} for task {task}; it returns {', '.join(result.keys())}")
                chunks[name].append(result[name].detach().float().numpy())
    return {name: np.concatenate(parts, axis=0) for name, parts in chunks.items()}
