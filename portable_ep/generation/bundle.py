"""A generative bundle's decoder, tokenizer and engine, built from its manifest (one place for the rules)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from portable_ep.backends.bundle_paths import confined_path
from portable_ep.generation.decoder import Decoder
from portable_ep.generation.engine import EngineLimits, GenerationEngine
from portable_ep.generation.grammar import GrammarCompiler, tokenizer_json_text
from portable_ep.generation.tokenizer import BundleTokenizer

#: Context for a manifest that does not give one (optimum's decoders of older exports).
DEFAULT_CONTEXT = 2048


def decoder_info(manifest: Optional[dict]) -> dict:
    return (manifest or {}).get("decoder") or {}


def bundle_decoder(session, manifest: Optional[dict]) -> Decoder:
    """The session as a decoder; kv heads and head size from the manifest where the runtime lost them."""
    info = decoder_info(manifest)
    return Decoder(session, info.get("num_kv_heads"), info.get("head_dim"))


def tokenizer_file(root: Path, manifest: Optional[dict]) -> Path:
    """The tokenizer.json the manifest names (``decoder.tokenizer``: a folder holding it, or the file), confined to the bundle."""
    relative = decoder_info(manifest).get("tokenizer", "tokenizer")
    path = confined_path(root, relative, "decoder.tokenizer")
    if path.is_dir():
        path = confined_path(root, f"{relative.rstrip('/')}/tokenizer.json", "decoder.tokenizer")
    return path


def bundle_tokenizer(root: Path, manifest: Optional[dict]) -> BundleTokenizer:
    """The bundle's tokenizer (confined to the bundle), with its BOS token id (for the rule against a second BOS)."""
    return BundleTokenizer(tokenizer_file(Path(root), manifest), decoder_info(manifest).get("bos_token_id"))


def context_length(manifest: Optional[dict]) -> int:
    return int(decoder_info(manifest).get("context_length") or DEFAULT_CONTEXT)


def bundle_engine(session, root: Path, manifest: dict, kv_budget_bytes: int, max_batch: int,
                  max_context: Optional[int] = None, log: Callable[[str], None] = lambda message: None,
                  **request_limits) -> GenerationEngine:
    """A (not started) engine for the bundle at ``root`` on ``session``; ``request_limits``:
    :class:`EngineLimits` fields (prompt bytes, stop strings) over their defaults."""
    context = context_length(manifest)
    if max_context:
        context = min(context, max_context)
    info = decoder_info(manifest)
    tokenizer = bundle_tokenizer(root, manifest)
    eos_ids = info.get("eos_token_ids") or []
    vocab_size = int(info.get("vocab_size") or tokenizer.vocab_size)
    # Structured output's matchers read the same tokenizer.json (the library is imported on first use).
    grammars = GrammarCompiler(tokenizer_json_text(tokenizer.file), vocab_size, eos_ids)
    return GenerationEngine(bundle_decoder(session, manifest), tokenizer, eos_ids,
                            EngineLimits(context, kv_budget_bytes, max_batch, **request_limits), log=log,
                            vocab_size=vocab_size, grammars=grammars)
