"""The bundle's tokenizer and chat template as the frontend uses them.

The tokenizer counts tokens (``usage`` when the model does not return its own counts, the
context check before a request is sent) and makes the inputs of encoder models. The chat
template is rendered the way transformers' ``apply_chat_template`` renders it (a sandboxed
Jinja2 environment with ``trim_blocks``/``lstrip_blocks``, ``raise_exception``,
``strftime_now`` and a ``tojson`` that keeps non-ASCII), so a chat request gives the model
the text the source's own tooling would have given it.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple

INSTALL_HINT = "pip install 'portable-ep[server]'"


class TextSetupError(RuntimeError):
    """The bundle's tokenizer or chat template cannot be used; the message says why."""


class TextTokenizer:
    """``tokenizer.json`` with its padding and truncation turned off (counts must be exact)."""

    def __init__(self, folder: Path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TextSetupError(f"package missing: tokenizers is not installed; {INSTALL_HINT}") from None
        file = Path(folder) / "tokenizer.json"
        if not file.is_file():
            raise TextSetupError(f"{file} is missing: re-export the model with this portable-ep (bundles carry their tokenizer)")
        self._tokenizer = Tokenizer.from_file(str(file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._special_ids = {i for i, token in self._tokenizer.get_added_tokens_decoder().items() if token.special}

    def count(self, text: str, add_special_tokens: bool = True) -> int:
        """Tokens of ``text`` as the served model counts them.

        A text that already begins with the BOS the tokenizer adds (a rendered chat template often
        does) gets no second one on the server (llama.cpp's rule), so a doubled leading special
        token is counted once.
        """
        # encode_batch lets go of the GIL while it works; the event loop runs it in a worker thread.
        ids = self._tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        if add_special_tokens and len(ids) > 1 and ids[0] == ids[1] and ids[0] in self._special_ids:
            return len(ids) - 1
        return len(ids)

    def encode_for_encoder(self, texts: List[str]) -> List[Tuple[List[int], List[int], List[int]]]:
        """(input_ids, attention_mask, token_type_ids) per text, special tokens added, unpadded."""
        return [(e.ids, e.attention_mask, e.type_ids) for e in self._tokenizer.encode_batch(texts)]


def _special_token(value) -> Optional[str]:
    if isinstance(value, dict):  # transformers' AddedToken as JSON
        return value.get("content")
    return value if isinstance(value, str) else None


class ChatTemplate:
    """The chat template of a tokenizer folder (``tokenizer_config.json`` or ``chat_template.jinja``)."""

    def __init__(self, source: str, special_tokens: dict):
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise TextSetupError(f"package missing: jinja2 is not installed; {INSTALL_HINT}") from None

        def raise_exception(message):
            raise TemplateError(message)

        def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(source)
        self.special_tokens = special_tokens

    @classmethod
    def from_folder(cls, folder: Path) -> Optional["ChatTemplate"]:
        """The folder's template, or None when it has none (a base model: use /v1/completions)."""
        folder = Path(folder)
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: transformers uses "default"
            named = {entry.get("name"): entry.get("template") for entry in source if isinstance(entry, dict)}
            source = named.get("default") or next(iter(named.values()), None)
        if not source and (folder / "chat_template.jinja").is_file():
            source = (folder / "chat_template.jinja").read_text()
        if not source:
            return None
        special = {key: _special_token(config.get(key)) for key in
                   ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")}
        return cls(source, {k: v for k, v in special.items() if v is not None})

    def render(self, messages: List[dict], add_generation_prompt: bool = True, **variables) -> str:
        """The prompt text; a template's own refusal (``raise_exception``) becomes TemplateError."""
        # later keys win: a request's variables cannot replace the messages or the generation prompt
        context = {**self.special_tokens, **variables, "messages": messages, "add_generation_prompt": add_generation_prompt}
        return self._template.render(context)
