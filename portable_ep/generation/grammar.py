"""Structured output: vLLM's ``guided_*`` sampling parameters as a token mask per decode step.

The grammar library is llguidance (``pip install 'portable-ep[llm]'``): a Rust engine made
for this job (JSON schema, regular expressions, choices, Lark grammars) that reads the
bundle's own ``tokenizer.json`` through the ``tokenizers`` library, computes the set of
allowed tokens in tens of microseconds and lets go of Python's GIL while it does. A
request's grammar is compiled when the request is accepted (on the thread that accepts it,
not the decode loop's); each step the engine asks its matcher for the allowed tokens,
sets every other logit to -inf before sampling, and feeds it the sampled token.
Sequences without a grammar never touch any of this.

What each parameter means (vLLM's): ``guided_json`` a JSON schema (the answer is a JSON
value valid against it), ``guided_json_object`` any JSON object, ``guided_regex`` a
regular expression the whole answer matches, ``guided_choice`` exactly one of the listed
strings. The matcher's own limits (llguidance's defaults: lexer fuel per step, items per
row) bound what one grammar can cost a step; a grammar it cannot build is refused with
its reason, for that request only.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence, Tuple

import numpy as np

from portable_ep.generation.sampling import SamplingError, SamplingParams

INSTALL_HINT = "pip install 'portable-ep[llm]'"


class GrammarUnavailable(SamplingError):
    """Structured output was asked for and the grammar library is not installed."""


def grammar_text(name: str, value) -> str:
    """llguidance's grammar definition for one ``guided_*`` parameter (ValueError for a bad one)."""
    from llguidance import LLMatcher

    # No free whitespace between tokens (a schema's own "x-guidance" may still ask for it): small
    # models otherwise fill max_tokens with blanks the grammar allows, and the JSON never ends.
    compact = {"whitespace_flexible": False}
    if name == "guided_json":
        return LLMatcher.grammar_from_json_schema(value, defaults=compact)
    if name == "guided_json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=compact)
    if name == "guided_regex":
        return LLMatcher.grammar_from_regex(value)
    if name == "guided_choice":
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(choice) for choice in value))
    raise ValueError(f"unknown structured-output parameter {name}")


class GrammarCompiler:
    """Builds the matchers of one model: holds llguidance's view of the tokenizer (built once, ~1 s)."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_ids: Sequence[int]):
        self._tokenizer_json = tokenizer_json
        self.vocab_size = int(vocab_size)
        self.eos_ids = [int(i) for i in eos_ids]
        self._tokenizer = None

    def _ll_tokenizer(self):
        if self._tokenizer is None:
            try:
                from llguidance import LLTokenizer
            except ImportError:
                raise GrammarUnavailable(f"structured output (guided_*) needs llguidance on the server: {INSTALL_HINT}") from None
            # n_vocab: the model's logit rows, which may exceed the tokenizer's ids (padded embeddings);
            # the rows no token has are never allowed.
            self._tokenizer = LLTokenizer(self._tokenizer_json, n_vocab=self.vocab_size,
                                          eos_token=self.eos_ids or None)
        return self._tokenizer

    def matcher(self, params: SamplingParams) -> Optional["GrammarMatcher"]:
        """The request's matcher, or None when it asks for no structured output; SamplingError names a bad grammar."""
        guided = params.guided
        if guided is None:
            return None
        name, value = guided
        tokenizer = self._ll_tokenizer()
        from llguidance import LLMatcher

        try:
            grammar = grammar_text(name, value)
        except ValueError as exc:
            raise SamplingError(f"{name} cannot be compiled: {exc}") from None
        matcher = LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise SamplingError(f"{name} cannot be compiled: {_first_line(matcher.get_error())}")
        return GrammarMatcher(matcher, self.vocab_size, name)


class GrammarMatcher:
    """One sequence's grammar state: the allowed tokens now, and the tokens it has taken."""

    def __init__(self, matcher, vocab_size: int, name: str):
        self._matcher = matcher
        self.name = name
        self.vocab_size = vocab_size
        self._bitmask = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """Boolean [vocab]: the tokens the grammar allows next (end-of-sequence once it is complete)."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self._matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self.vocab_size].astype(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of one row of logits with every token the grammar forbids at -inf."""
        allowed = self.allowed()
        if self._matcher.is_error():
            raise SamplingError(f"{self.name}: the grammar failed: {_first_line(self._matcher.get_error())}")
        masked = np.array(logits, dtype=np.float32, copy=True)
        masked[: len(allowed)][~allowed] = -np.inf
        masked[len(allowed):] = -np.inf
        return masked

    def take(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            raise SamplingError(f"{self.name}: token {token} does not fit the grammar: "
                                f"{_first_line(self._matcher.get_error())}")

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and allows nothing more than ending the sequence."""
        return self._matcher.is_stopped()


def _first_line(text: str) -> str:
    """llguidance's message on one line (its regex errors span several, the cause on the last ones)."""
    return " ".join(line.strip() for line in (text or "unknown error").splitlines() if line.strip())[:300]


def tokenizer_json_text(path) -> str:
    from pathlib import Path

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    return file.read_text(encoding="utf-8")


__all__: Tuple[str, ...] = ("GrammarCompiler", "GrammarMatcher", "GrammarUnavailable", "grammar_text")
