"""Which models the repository serves through the OpenAI API, and what each needs to be served.

A model is *generative* when its version folder holds a ``text-generation`` bundle, an
*embedding* model when its bundle has a tokenizer and a ``sentence_embedding`` output (or a
``last_hidden_state`` with an ``attention_mask`` input, which the frontend mean-pools). Files
come from the repository on disk (the same folder Triton reads); the inputs, outputs and
parameters come from Triton's own copy of each model's configuration, so what the frontend
sends is what the loaded model takes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import grpc

from portable_ep.backends.artifacts import latest_version_dir
from portable_ep.backends.bundle_paths import confined_path
from portable_ep.generation.bundle import context_length, tokenizer_file
from portable_ep.generation.engine import EngineLimits
from portable_ep.openai_api.text import ChatTemplate, TextSetupError, TextTokenizer

GENERATION = "generation"
EMBEDDING = "embedding"
EMBEDDING_OUTPUT = "sentence_embedding"
HIDDEN_OUTPUT = "last_hidden_state"
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: vLLM's optional inputs whose outputs the frontend reads when the model declares them.
RETURN_INPUTS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")


@dataclass
class ServedModel:
    name: str
    kind: str  # GENERATION or EMBEDDING
    version_dir: Path
    tokenizer: TextTokenizer
    created: int
    #: generation: the context in tokens, the prompt byte limit (0: none), the chat template
    context: int = 0
    prompt_bytes: int = 0
    chat_template: Optional[ChatTemplate] = None
    #: generation: the return_* inputs the model's configuration declares
    return_inputs: tuple = ()
    #: embedding: the output read, whether the frontend mean-pools it, the encoder's inputs and their Triton types
    embedding_output: str = ""
    mean_pool: bool = False
    encoder_inputs: Dict[str, str] = field(default_factory=dict)
    batched: bool = True
    width: int = 0


def _parameter(config: dict, key: str) -> Optional[str]:
    value = (config.get("parameters") or {}).get(key)
    return value.get("string_value") if isinstance(value, dict) else None


def describe_model(name: str, model_dir: Path, config: dict) -> Optional[ServedModel]:
    """The model as the OpenAI API serves it, None when it is neither generative nor an embedding model.

    ``config`` is Triton's model configuration as JSON. TextSetupError when the model is one of
    the two kinds but its tokenizer or template cannot be used.
    """
    version_dir = latest_version_dir(model_dir)
    if version_dir is None or not (version_dir / "manifest.json").is_file():
        return None
    manifest = json.loads((version_dir / "manifest.json").read_text())
    created = int((version_dir / "manifest.json").stat().st_mtime)
    inputs = {entry["name"]: entry.get("data_type", "") for entry in config.get("input", [])}
    outputs = {entry["name"]: entry for entry in config.get("output", [])}
    if manifest.get("task") == "text-generation":
        folder = tokenizer_file(version_dir, manifest).parent
        context = context_length(manifest)
        configured = _parameter(config, "generation.max_context")
        if configured and configured.isdigit():
            context = min(context, int(configured))
        configured_bytes = _parameter(config, "generation.max_prompt_bytes")
        limits = EngineLimits(context, 0, max_prompt_bytes=int(configured_bytes) if configured_bytes and configured_bytes.isdigit() else None)
        return ServedModel(name, GENERATION, version_dir, TextTokenizer(folder), created, context=context,
                           prompt_bytes=limits.prompt_bytes, chat_template=ChatTemplate.from_folder(folder),
                           return_inputs=tuple(n for n in RETURN_INPUTS if n in inputs))
    tokenizer_folder = manifest.get("tokenizer")
    if not tokenizer_folder or "input_ids" not in inputs:
        return None
    if EMBEDDING_OUTPUT in outputs:
        output, pool = EMBEDDING_OUTPUT, False
    elif HIDDEN_OUTPUT in outputs and "attention_mask" in inputs:
        output, pool = HIDDEN_OUTPUT, True
    else:
        return None
    dims = [int(d) for d in outputs[output].get("dims", [])]
    max_dims = (manifest.get("limits") or {}).get("max_dims") or {}
    context = min((int(v) for v in max_dims.values()), default=0)
    tokenizer = confined_path(version_dir, tokenizer_folder, "tokenizer")
    return ServedModel(name, EMBEDDING, version_dir, TextTokenizer(tokenizer if tokenizer.is_dir() else tokenizer.parent), created,
                       context=context, embedding_output=output, mean_pool=pool,
                       encoder_inputs={n: inputs[n] for n in ENCODER_INPUTS if n in inputs},
                       batched=int(config.get("max_batch_size", 0)) > 0, width=dims[-1] if dims else 0)


class Catalog:
    """The served models by name, rebuilt from Triton's repository index when it changes.

    The index is read at most once per ``ttl_s`` (a request for a name not yet known reads
    it at once), so a model loaded, reloaded or unloaded after start is seen within a second.
    """

    def __init__(self, repository: Path, triton, log=lambda message: None, ttl_s: float = 1.0):
        self.repository = Path(repository)
        self.triton = triton
        self.log = log
        self.ttl_s = ttl_s
        self._models: Dict[str, ServedModel] = {}
        self._states: Dict[str, str] = {}  # name -> Triton's state (READY, LOADING, UNAVAILABLE, ...)
        self._seen: Dict[str, str] = {}  # name -> version/state when last described
        self._read_at = 0.0

    async def refresh(self, force: bool = False) -> Dict[str, ServedModel]:
        """Describe every model of Triton's index that is new or changed since the last read."""
        if not force and time.monotonic() - self._read_at < self.ttl_s:
            return dict(self._models)
        try:
            index = await self.triton.repository_index()
        except grpc.aio.AioRpcError as exc:  # tritonserver restarting: 503, as for a model not ready
            from portable_ep.openai_api.errors import from_grpc

            raise from_grpc(exc.code(), exc.details() or "", "") from None
        self._read_at = time.monotonic()
        self._states = {entry["name"]: entry.get("state", "") for entry in index}
        current = {entry["name"]: f"{entry.get('version', '')}/{entry.get('state', '')}" for entry in index}
        for name in list(self._models):
            if name not in current:
                self._models.pop(name)
        for name, key in current.items():
            if self._seen.get(name) == key or not key.endswith("/READY"):
                continue  # described once it has loaded: its configuration comes from Triton
            self._seen[name] = key
            try:
                described = describe_model(name, self.repository / name, await self.triton.model_config(name))
            except grpc.aio.AioRpcError as exc:
                from portable_ep.openai_api.errors import from_grpc

                raise from_grpc(exc.code(), exc.details() or "", name) from None
            except Exception as exc:  # noqa: BLE001 - a bundle this API cannot read is one line, the others serve
                self._models.pop(name, None)
                self.log(f"portable-ep openai: model {name} is not served through the OpenAI API: {exc}")
                continue
            if described is not None:
                self._models[name] = described
        return dict(self._models)

    async def lookup(self, name: str) -> ServedModel:
        """The ready model ``name``, else APIError 404 (not served here) or 503 (known but not ready)."""
        from portable_ep.openai_api.errors import not_ready, unknown_model

        await self.refresh(force=name not in self._models)
        state = self._states.get(name)
        if state is not None and state != "READY":
            raise not_ready(name)
        model = self._models.get(name)
        if model is None:
            raise unknown_model(name, list(self._models))
        return model

    def ready(self) -> list:
        """The models the API serves now, by name."""
        return [self._models[name] for name in sorted(self._models) if self._states.get(name) == "READY"]


def repository_has_api_models(repository: Path) -> bool:
    """Does any model of the repository look generative or like an embedding model (from its files alone)?

    ``portable-ep serve`` starts the OpenAI API by default only then; which models it serves is
    decided per model once Triton has loaded them (:func:`describe_model`).
    """
    for model_dir in Path(repository).iterdir() if Path(repository).is_dir() else ():
        version_dir = latest_version_dir(model_dir) if model_dir.is_dir() else None
        if version_dir is None or not (version_dir / "manifest.json").is_file():
            continue
        try:
            manifest = json.loads((version_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        outputs = {o.get("name") for o in (manifest.get("signature") or {}).get("outputs", [])}
        if manifest.get("task") == "text-generation" or (manifest.get("tokenizer") and outputs & {EMBEDDING_OUTPUT, HIDDEN_OUTPUT}):
            return True
    return False
