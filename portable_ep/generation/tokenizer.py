"""The bundle's tokenizer (``tokenizer/tokenizer.json``), read with the ``tokenizers`` library.

Serving needs encode and decode only: the chat template is the client's business, as
with vLLM's Triton backend, whose ``text_input`` is the prompt as the model sees it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

INSTALL_HINT = "pip install 'portable-ep[llm]'"


class TokenizerMissing(RuntimeError):
    pass


def drop_repeated_bos(ids: List[int], text: str, bos_id: Optional[int], bos_text: Optional[str]) -> List[int]:
    """llama.cpp's rule: a text that already begins with the BOS token gets no second one.

    A client (or a frontend) that renders the chat template puts the template's BOS in the
    text, and the tokenizer's post-processor adds its own in front: ``[1, 1, ...]``, a prompt
    the model never saw in training, whose answer drifts from the real one within a few
    tokens. transformers' ``apply_chat_template`` tokenizes without special tokens for the
    same reason.
    """
    if bos_id is None or not bos_text or len(ids) < 2 or ids[0] != bos_id or ids[1] != bos_id:
        return ids
    return ids[1:] if text.startswith(bos_text) else ids


class BundleTokenizer:
    def __init__(self, path: Path, bos_token_id: Optional[int] = None):
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
        self.file = file
        self.bos_token_id = None if bos_token_id is None else int(bos_token_id)
        self.bos_text = self._tokenizer.id_to_token(self.bos_token_id) if self.bos_token_id is not None else None

    def encode(self, text: str) -> List[int]:
        # As vLLM does: the tokenizer's own post-processor adds BOS where the model wants
        # it. The exporter checks this encoding of its golden prompts against the source's.
        # encode_batch, not encode: the same ids, but it lets go of the GIL while it works
        # (encode holds it: a 2 MiB prompt froze every other Python thread of the stub,
        # the generation loop included, for the 1.4 s it took to tokenize).
        ids = self._tokenizer.encode_batch([text])[0].ids
        return drop_repeated_bos(ids, text, self.bos_token_id, self.bos_text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Token ids the tokenizer knows, added (special) tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)


class IncrementalDetokenizer:
    """Text deltas of a growing token sequence, holding back an unfinished UTF-8 character.

    Byte-level BPE splits multi-byte characters over tokens; decoding such a prefix ends
    in U+FFFD, which must not be streamed and then taken back. Each step decodes only a
    window of the newest tokens (vLLM's prefix/read offsets), not the whole answer, so a
    long answer costs the same per token as a short one. Both decodes of a step start at
    the same token, so a decoder that treats the first token specially (a leading space)
    does so in both and the difference is the true delta.
    """

    def __init__(self, tokenizer: BundleTokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: List[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens whose text is handed out

    def _delta(self) -> tuple:
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], self.skip_special_tokens)
        after = decode(self.ids[self._prefix:], self.skip_special_tokens)
        return before, after

    def add(self, token: int) -> str:
        self.ids.append(token)
        before, after = self._delta()
        if after.endswith("\ufffd") or len(after) <= len(before) or not after.startswith(before):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before):]

    def flush(self) -> str:
        """Whatever was held back (an incomplete character at the very end stays as U+FFFD)."""
        before, after = self._delta()
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before):] if after.startswith(before) else ""
