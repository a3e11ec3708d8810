"""A generative bundle's decoder, tokenizer and engine, built from its manifest (one place for the rules)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from portable_ep.backends.bundle_paths import confined_path
from portable_ep.generation.decoder import Decoder
from portable_ep.generation.engine import EngineLimits, GenerationEngine
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
    return BundleTokenizer(tokenizer_file(Path(root), manifest))


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
    return GenerationEngine(bundle_decoder(session, manifest), bundle_tokenizer(root, manifest),
                            info.get("eos_token_ids") or [],
                            EngineLimits(context, kv_budget_bytes, max_batch, **request_limits), log=log,
                            vocab_size=info.get("vocab_size"))
