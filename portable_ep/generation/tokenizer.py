"""The bundle's tokenizer (``tokenizer/tokenizer.json``), read with the ``tokenizers`` library.

Serving needs encode and decode only: the chat template is the client's business, as
with vLLM's Triton backend, whose ``text_input`` is the prompt as the model sees it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

INSTALL_HINT = "pip install 'portable-ep[llm]'"


class TokenizerMissing(RuntimeError):
    pass


class BundleTokenizer:
    def __init__(self, path: Path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerMissing(f"package missing: tokenizers is not installed; {INSTALL_HINT}") from None
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise TokenizerMissing(f"{file} is missing: a generative bundle needs its tokenizer (re-export the model)")
        self._tokenizer = Tokenizer.from_file(str(file))

    def encode(self, text: str) -> List[int]:
        # As vLLM does: the tokenizer's own post-processor adds BOS where the model wants
        # it. The exporter checks this encoding of its golden prompts against the source's.
        return self._tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    """Text deltas of a growing token sequence, holding back an unfinished UTF-8 character.

    Byte-level BPE splits multi-byte characters over tokens; decoding such a prefix ends
    in U+FFFD, which must not be streamed and then taken back.
    """

    def __init__(self, tokenizer: BundleTokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: List[int] = []
        self.text = ""  # text emitted so far

    def add(self, token: int) -> str:
        self.ids.append(token)
        full = self.tokenizer.decode(self.ids, self.skip_special_tokens)
        if full.endswith("\ufffd") or not full.startswith(self.text):
            return ""
        delta, self.text = full[len(self.text):], full
        return delta

    def flush(self) -> str:
        """Whatever was held back (an incomplete character at the very end stays as U+FFFD)."""
        full = self.tokenizer.decode(self.ids, self.skip_special_tokens)
        delta, self.text = (full[len(self.text):] if full.startswith(self.text) else ""), full
        return delta
