"""What the user asked to export: a Hugging Face model folder or an ONNX file.

Everything is local: a folder is read with ``local_files_only`` and nothing is
fetched from a hub.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from portable_ep.exporters.errors import ExportError

#: Tasks a Hugging Face folder is exported for (through optimum, exporters/optimum_export.py).
TASKS = (
    "text-classification", "token-classification", "question-answering", "fill-mask", "feature-extraction",
    "image-classification", "object-detection", "semantic-segmentation", "audio-classification",
)
#: Architecture name endings -> task, for folders whose config.json names its architecture.
ARCHITECTURE_TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForSemanticSegmentation", "semantic-segmentation"),
    ("ForAudioClassification", "audio-classification"),
)
#: Speech encoders whose ...ForSequenceClassification head classifies audio, not text.
AUDIO_MODEL_TYPES = ("wav2vec2", "wav2vec2-conformer", "hubert", "wavlm", "unispeech", "unispeech-sat", "sew", "sew-d",
                     "data2vec-audio", "audio-spectrogram-transformer", "whisper")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class Source:
    kind: str  # "huggingface" or "onnx"
    path: Path
    task: Optional[str] = None
    config: dict = field(default_factory=dict)  # config.json of a Hugging Face folder

    def describe(self) -> str:
        return f"{self.kind} {self.path}" + (f" (task {self.task})" if self.task else "")


def infer_task(architectures, model_type: Optional[str] = None) -> Optional[str]:
    for arch in architectures or ():
        for ending, task in ARCHITECTURE_TASKS:
            if arch.endswith(ending):
                if task == "text-classification" and model_type in AUDIO_MODEL_TYPES:
                    return "audio-classification"
                return task
        # A bare encoder (BertModel), not a model with a head (GPT2LMHeadModel).
        if arch.endswith("Model") and "For" not in arch and "Head" not in arch:
            return "feature-extraction"
    return None


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; portable-ep exports {', '.join(sorted(TASKS))}")
    return task


def resolve_source(path, task: Optional[str] = None) -> Source:
    path = Path(path)
    if not path.exists():
        raise ExportError(f"source {path} does not exist; give a Hugging Face model folder or a .onnx file")
    if path.is_file():
        if path.suffix != ".onnx":
            raise ExportError(f"source {path} is a file but not .onnx; give a Hugging Face model folder or a .onnx file")
        if task is not None:
            _check_task(task)
        return Source("onnx", path.resolve(), task)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{path} has no config.json: not a Hugging Face model folder (save one with model.save_pretrained(DIR))")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_path} is not valid JSON ({exc})") from None
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ExportError(
            f"{path} has a config.json but no weights ({' or '.join(WEIGHT_FILES[:2])}); "
            "save the model with model.save_pretrained(DIR), not just its config"
        )
    if task is None:
        task = infer_task(config.get("architectures"), config.get("model_type"))
        if task is None:
            raise ExportError(
                f"cannot infer the task of {path} from architectures {config.get('architectures')}; "
                f"pass --task, one of {', '.join(sorted(TASKS))}"
            )
    return Source("huggingface", path.resolve(), _check_task(task), config)
