"""The generative bundle's ``tokenizer/`` files describe the tokenizer they hold.

Clients (and the OpenAI-compatible frontend) load ``tokenizer/`` with transformers to render
the chat template, so its files must say what the tokenizer really is:

- **special tokens from the source.** transformers reads a GGUF's vocabulary and template but
  not its ``tokenizer.ggml.eos_token_id`` / ``add_bos_token``: SmolLM2's GGUF came out with
  EOS ``<|im_start|>`` (its BOS) and a post-processor adding BOS to every encoding, which
  the GGUF says not to do. :func:`correct_gguf_tokenizer` applies the GGUF's own values;
- **the class.** a ByteLevel BPE ``tokenizer.json`` labelled ``LlamaTokenizer`` (what the
  GGUF loader writes) tells a client to expect a SentencePiece model it does not have;
  :func:`fix_tokenizer_class` labels it ``PreTrainedTokenizerFast``, which reads
  ``tokenizer.json`` as it is;
- **the end-of-turn token.** a chat model ends its answer with the template's end-of-turn
  token (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``), which is not always its EOS:
  :func:`end_of_turn_id` finds it in the template, and the exporter adds it to the ids the
  server stops on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

from portable_ep.exporters.errors import ExportError

#: Classes that mean a SentencePiece tokenizer; a tokenizer.json with a ByteLevel pre-tokenizer is not one.
_SENTENCEPIECE_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")
_MARKER = "portableependofturnmarker"


def gguf_tokenizer_metadata(path: Path) -> dict:
    """``bos_token_id``, ``eos_token_id``, ``eot_token_id``, ``add_bos_token`` as the GGUF file states them."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    found = {}
    for key, name in (("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                      ("tokenizer.ggml.eot_token_id", "eot_token_id"), ("tokenizer.ggml.add_bos_token", "add_bos_token")):
        field = reader.fields.get(key)
        if field is not None and field.data:
            value = field.parts[field.data[0]].tolist()
            value = value[0] if isinstance(value, list) else value
            found[name] = bool(value) if name == "add_bos_token" else int(value)
    return found


def correct_gguf_tokenizer(tokenizer, gguf_path: Path) -> dict:
    """Give the tokenizer loaded from a GGUF the BOS/EOS tokens and BOS rule the GGUF states; returns them."""
    metadata = gguf_tokenizer_metadata(gguf_path)
    size = len(tokenizer)
    for name in ("bos", "eos"):
        token_id = metadata.get(f"{name}_token_id")
        if token_id is not None and 0 <= token_id < size:
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
    if "add_bos_token" in metadata and hasattr(tokenizer, "add_bos_token"):
        # LlamaTokenizerFast rebuilds its post-processor from this flag, so tokenizer.json follows.
        tokenizer.add_bos_token = metadata["add_bos_token"]
    return metadata


def end_of_turn_id(tokenizer) -> Optional[int]:
    """The special token the chat template puts right after an assistant's message, if there is one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}],
                                             tokenize=False)
    except Exception:  # noqa: BLE001 - a template that needs other roles or fields: no end-of-turn token known
        return None
    at = text.find(_MARKER)
    if at < 0:
        return None
    ids = tokenizer(text[at + len(_MARKER):], add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    special = set(tokenizer.all_special_ids) | {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return int(ids[0]) if ids[0] in special else None


def _is_byte_level(tokenizer_json: dict) -> bool:
    def types(node) -> List[str]:
        if not isinstance(node, dict):
            return []
        found = [node.get("type", "")]
        for child in node.get("pretokenizers", []) or []:
            found += types(child)
        return found
    return "ByteLevel" in types(tokenizer_json.get("pre_tokenizer"))


def fix_tokenizer_class(folder: Path) -> Optional[str]:
    """Relabel a ByteLevel tokenizer.json's SentencePiece class as PreTrainedTokenizerFast; returns the old class."""
    config_path, json_path = Path(folder) / "tokenizer_config.json", Path(folder) / "tokenizer.json"
    config = json.loads(config_path.read_text())
    old = config.get("tokenizer_class")
    if old not in _SENTENCEPIECE_CLASSES or not _is_byte_level(json.loads(json_path.read_text())):
        return None
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("legacy", "add_prefix_space"):  # SentencePiece options PreTrainedTokenizerFast does not take
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return old


def check_saved_tokenizer(folder: Path, tokenizer, texts: Sequence[str]) -> None:
    """The files, loaded as a client loads them, encode like the tokenizer they were saved from."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for text in texts:
        if saved(text)["input_ids"] != tokenizer(text)["input_ids"]:
            raise ExportError(f"the bundle's tokenizer files, loaded with transformers, encode {text[:40]!r} differently "
                              "from the source's tokenizer")
    if saved.eos_token != tokenizer.eos_token or saved.bos_token != tokenizer.bos_token:
        raise ExportError(f"the bundle's tokenizer files say BOS {saved.bos_token!r} / EOS {saved.eos_token!r}, "
                          f"the source's tokenizer {tokenizer.bos_token!r} / {tokenizer.eos_token!r}")
