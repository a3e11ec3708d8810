"""Sampling parameters (vLLM's names and defaults) and the sampler that applies them.

The Triton model takes them as vLLM's backend does: a JSON object in the
``sampling_parameters`` input, and/or request parameters (what Triton's HTTP
``/generate`` puts under ``"parameters"``). Values may arrive as strings there, so
each field is converted by its type; a wrong value or an unknown name is refused
with a message naming it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np


class SamplingError(ValueError):
    """A sampling parameter the request got wrong; the message names it."""


# Accepted for compatibility with vLLM clients, meaningful only at their defaults here.
_ONLY_DEFAULT = {"n": 1, "best_of": 1, "prompt_logprobs": None, "use_beam_search": False}
# Keys Triton clients send beside the sampling parameters (read elsewhere or by Triton).
_NOT_SAMPLING = {"stream", "exclude_input_in_output", "return_finish_reason", "return_num_output_tokens",
                 "return_num_input_tokens", "return_cumulative_logprob", "return_logprobs", "text_input"}
#: Most alternatives ``logprobs`` may ask for per token (OpenAI's top_logprobs limit; vLLM's default max is 20).
MAX_LOGPROBS = 20
#: vLLM's structured-output names; at most one per request (``portable_ep.generation.grammar``).
GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_json_object")
# Names Triton's own OpenAI frontend forwards in vLLM mode (it passes the OpenAI request's fields through):
# OpenAI's newer max_completion_tokens and top_logprobs, and vLLM's guided_decoding object (tool calls).
_ALIASES = {"max_completion_tokens", "top_logprobs", "guided_decoding"}
#: guided_decoding's keys → the guided_* parameter each one is.
_GUIDED_DECODING = {"json": "guided_json", "regex": "guided_regex", "choice": "guided_choice",
                    "json_object": "guided_json_object"}


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: List[str] = field(default_factory=list)
    stop_token_ids: List[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: Top alternatives to report per generated token (None: no logprobs; 0: the sampled token's only).
    logprobs: Optional[int] = None
    # Structured output (vLLM's names): a JSON schema (kept as JSON text), a regex, a list of
    # choices, or any JSON object. The engine masks the logits with a grammar built from it.
    guided_json: Optional[str] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[List[str]] = None
    guided_json_object: bool = False

    @property
    def guided(self) -> Optional[tuple]:
        """(vLLM name, value) of the request's structured-output constraint, or None."""
        for name in GUIDED:
            value = getattr(self, name)
            if value not in (None, False):
                return name, value
        return None

    @property
    def greedy(self) -> bool:
        # vLLM's rule: below 1e-5 a temperature is greedy (dividing by it would overflow the logits).
        return self.temperature < 1e-5

    @classmethod
    def from_request(cls, sampling_json: Optional[str], parameters: Optional[Mapping[str, Any]] = None) -> "SamplingParams":
        """Merge request parameters (known names only) and the JSON input (every name must be known)."""
        values: dict = {}
        known = {f.name for f in fields(cls)}
        for key, value in (parameters or {}).items():
            if key in known or key in _ONLY_DEFAULT or key in _ALIASES:
                values[key] = value
        if sampling_json:
            try:
                given = json.loads(sampling_json)
            except json.JSONDecodeError as exc:
                raise SamplingError(f"sampling_parameters is not JSON ({exc.msg} at position {exc.pos})") from None
            if not isinstance(given, dict):
                raise SamplingError("sampling_parameters must be a JSON object, e.g. {\"max_tokens\": 64, \"temperature\": 0}")
            unknown = sorted(set(given) - known - set(_ONLY_DEFAULT) - _NOT_SAMPLING - _ALIASES)
            if unknown:
                raise SamplingError(f"unknown sampling parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            values.update({k: v for k, v in given.items() if k not in _NOT_SAMPLING})
        return cls.build(values)

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> "SamplingParams":
        values = _resolve_aliases(values)
        for key, default in _ONLY_DEFAULT.items():
            value = values.get(key)
            if isinstance(value, str) and isinstance(default, bool):
                value = convert_value(key, value, "bool")
            elif isinstance(value, str) and isinstance(default, int) and value.strip().isdigit():
                value = int(value)
            if key in values and value not in (default, None):
                raise SamplingError(f"{key}={values[key]!r} is not supported (one sequence per request, no prompt logprobs)")
        kwargs = {}
        for f in fields(cls):
            if f.name in values and values[f.name] is not None:
                kind = "json-schema" if f.name == "guided_json" else f.type
                kwargs[f.name] = convert_value(f.name, values[f.name], kind)
        params = cls(**kwargs)
        params.validate()
        return params

    def validate(self) -> None:
        checks = [
            (self.max_tokens >= 1, "max_tokens must be at least 1"),
            (0 <= self.min_tokens <= self.max_tokens, "min_tokens must be between 0 and max_tokens"),
            (self.temperature >= 0, "temperature must be >= 0 (0 is greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k == -1 or self.top_k >= 0, "top_k must be -1 or 0 (off) or a positive count"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (all(t >= 0 for t in self.stop_token_ids), "stop_token_ids must be token ids (>= 0)"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be a string or a list of non-empty strings"),
            (self.seed is None or self.seed >= 0, "seed must be >= 0"),
            (self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
             f"logprobs must be between 0 and {MAX_LOGPROBS} (alternatives per token)"),
            (sum(getattr(self, name) not in (None, False) for name in GUIDED) <= 1,
             "give at most one of " + ", ".join(GUIDED)),
            (self.guided_regex is None or self.guided_regex != "", "guided_regex must be a non-empty regular expression"),
            (self.guided_choice is None or len(self.guided_choice) > 0, "guided_choice must list at least one string"),
        ]
        for ok, message in checks:
            if not ok:
                raise SamplingError(message)


def convert_value(name: str, value: Any, kind: str):
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not np.isfinite(number):
                raise ValueError
            return number
        if kind == "Optional[int]":
            return None if value in ("", "null") else convert_value(name, value, "int")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1"):
                return True
            if text in ("false", "0"):
                return False
            raise ValueError
        if kind == "List[str]":
            if isinstance(value, str):
                return [value]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError
        if kind == "Optional[str]":
            if isinstance(value, str):
                return value
            raise ValueError
        if kind == "Optional[List[str]]":
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError
        if kind == "json-schema":
            return _schema_text(name, value)
        if kind == "List[int]":
            if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return list(value)
            raise ValueError
    except (TypeError, ValueError):
        pass
    wanted = {"int": "an integer", "float": "a number", "Optional[int]": "an integer", "bool": "true or false",
              "List[str]": "a string or a list of strings", "List[int]": "a list of integers",
              "Optional[str]": "a string", "Optional[List[str]]": "a list of strings",
              "json-schema": "a JSON schema (an object, or a string holding one)"}[kind]
    raise SamplingError(f"sampling parameter {name}={value!r} must be {wanted}")


def _resolve_aliases(given: Mapping[str, Any]) -> dict:
    """Other clients' names for the same parameters, as vLLM's own names.

    OpenAI's chat request has ``logprobs`` as a flag (false: none; true: with ``top_logprobs``
    alternatives) where vLLM has a count, and ``max_completion_tokens`` for ``max_tokens``;
    vLLM's ``guided_decoding`` object holds what the ``guided_*`` parameters say.
    """
    values = dict(given)
    if isinstance(values.get("logprobs"), bool):
        values["logprobs"] = values.get("top_logprobs") or 0 if values["logprobs"] else None
    top = values.pop("top_logprobs", None)
    if top is not None and values.get("logprobs") is None:
        raise SamplingError("top_logprobs needs logprobs: true")
    completion = values.pop("max_completion_tokens", None)
    if completion is not None and values.get("max_tokens") is None:
        values["max_tokens"] = completion
    guided = values.pop("guided_decoding", None)
    if guided is not None:
        if not isinstance(guided, dict):
            raise SamplingError("sampling parameter guided_decoding must be an object, e.g. {\"json\": {...}}")
        for key, value in guided.items():
            if value in (None, False):
                continue
            if key not in _GUIDED_DECODING:
                raise SamplingError(f"guided_decoding.{key} is not supported; use one of "
                                    + ", ".join(_GUIDED_DECODING))
            values[_GUIDED_DECODING[key]] = value
    return values


def _schema_text(name: str, value: Any) -> str:
    """A JSON schema as compact JSON text; given as an object or as JSON text (OpenAI clients send either)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError from None
    if not isinstance(value, dict):
        raise ValueError
    return json.dumps(value, separators=(",", ":"))


class Sampler:
    """Next token of one sequence from its logits row; owns the sequence's random stream."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, prompt: Sequence[int], banned: Sequence[int] = (),
                 generated: Sequence[int] = ()) -> int:
        """Repetition penalty over prompt and output; presence/frequency over the output only (as vLLM)."""
        with np.errstate(over="ignore"):  # an overflow to inf is handled (_finite_or_refuse), not a warning per token
            return self._sample(np.asarray(logits, np.float64), prompt, banned, generated)

    def _sample(self, logits: np.ndarray, prompt: Sequence[int], banned, generated: Sequence[int]) -> int:
        p = self.params
        vocab = logits.shape[0]
        if len(banned) or p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
            logits = logits.copy()
            banned = np.asarray(banned, np.int64).reshape(-1)
            banned = banned[(banned >= 0) & (banned < vocab)]
            if len(banned):  # end-of-sequence and stop tokens before min_tokens
                logits[banned] = -np.inf
            history = [*prompt, *generated] if p.repetition_penalty != 1.0 else []  # built only when used
            if history:
                seen = np.bincount(np.asarray(history, np.int64), minlength=vocab)[:vocab] > 0
                logits[seen] = np.where(logits[seen] > 0, logits[seen] / p.repetition_penalty,
                                        logits[seen] * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and len(generated):
                counts = np.bincount(np.asarray(generated, np.int64), minlength=vocab)[:vocab]
                logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
        logits = _finite_or_refuse(logits, p)
        if p.greedy:
            return int(np.argmax(logits))
        logits = _finite_or_refuse(logits / p.temperature, p)  # a huge logit over a small temperature overflows
        if p.top_k > 0 and p.top_k < logits.shape[0]:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - np.max(logits))
        probs /= probs.sum()
        if p.top_p < 1.0:  # vLLM's order: top-k, top-p, min-p
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            # keep the smallest prefix whose mass reaches top_p (at least one token)
            cut = int(np.searchsorted(cumulative, p.top_p)) + 1
            kept = np.zeros_like(probs)
            kept[order[:cut]] = probs[order[:cut]]
            probs = kept / kept.sum()
        if p.min_p > 0:
            probs = np.where(probs < p.min_p * probs.max(), 0.0, probs)
            probs /= probs.sum()
        return int(self.rng.choice(probs.shape[0], p=probs))


def _finite_or_refuse(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Logits a distribution can be made of, or a :class:`SamplingError` that says why not.

    Without this a row of -inf (every token banned) or a +inf (a repetition_penalty so
    small that dividing by it overflows) becomes NaN probabilities, and numpy's
    "probabilities contain NaN" tells nobody which parameter did it. Tokens at +inf are
    the limit of the distribution: they share it. The request's own parameters that can
    empty it are refused before it is queued (``GenerationEngine.check_params``); this is
    what remains possible only once the model's logits are known.
    """
    top = logits.max()
    if np.isfinite(top):
        return logits
    if np.isnan(top):  # max() is NaN when any logit is
        raise SamplingError("the model's logits hold NaN: no token can be sampled")
    if top > 0:
        return np.where(logits == np.inf, 0.0, -np.inf)
    raise SamplingError("no token left to sample: every token's probability is zero after the banned tokens "
                        f"(min_tokens={params.min_tokens}, stop_token_ids) and repetition_penalty="
                        f"{params.repetition_penalty}")
