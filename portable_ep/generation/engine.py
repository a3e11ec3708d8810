"""Continuous batching: sequences join and leave one running batch between decode steps.

One thread owns the provider session. Each turn of its loop it (1) drops cancelled
sequences, (2) admits waiting requests up to ``max_batch`` (each prompt prefilled
alone, its first token sampled at once: that is the time to first token), and (3) runs
ONE forward pass for every active sequence, samples a token per row and hands each
sequence its text delta. A sequence that stops is removed before the next step, so
it never holds the others up.

Memory is bounded by reservation: a request reserves the cache bytes of its prompt
plus ``max_tokens`` when it is accepted, and a request that does not fit in what is
left is refused at once with the figures, never queued to fail later.

Time is bounded too: the loop's thread is every sequence's, so nothing a request asks
for may make a step cost more than the model's own work. Stop strings are limited in
number and length and matched incrementally (``stop.StopMatcher``: a cost per character
that does not grow with their number); stop token ids are a set; the ids banned before
``min_tokens`` are computed once per request; and a request whose parameters leave no
token to sample is refused before it is queued (:meth:`GenerationEngine.check_params`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from portable_ep.generation.decoder import DecodeBatch, Decoder
from portable_ep.generation.sampling import Sampler, SamplingParams
from portable_ep.generation.stop import StopMatcher
from portable_ep.generation.tokenizer import BundleTokenizer, IncrementalDetokenizer

MIB = 1 << 20
KIB = 1 << 10

# Prompt bytes per token, for the prompt byte limit checked before tokenizing (a prompt's
# tokens cannot be counted without tokenizing it, which is the expensive work: 8 MiB of
# prose is 2.8 M tokens, ~9 s and over 1 GB in the tokenizer). Measured with SmolLM2's
# byte-level BPE: English prose 3.0 bytes a token, Python code 3.9, CJK 1.7, random text
# 1.0-1.3; only long runs of one character go further (newlines 4, spaces and dashes 62,
# its longest token is 81 bytes). 32 is 8x what text takes; a prompt over context x 32
# bytes holds at least 8 contexts' worth of ordinary text. At SmolLM2's 8192-token
# context that is 256 KiB, tokenized in ~150 ms.
PROMPT_BYTES_PER_TOKEN = 32
# Stop strings: an automaton of 64 strings of 256 characters (16,000 nodes) builds in
# 10-40 ms (on the thread accepting the request) and holds ~4 MiB, and costs < 1 µs a token to run (the scan it replaced took
# ~2 ms a token at that size, more than a tiny model's decode step). TGI and OpenAI's
# API take 4 stop strings; 64 leaves room for tool-call and chat-format markers.
DEFAULT_MAX_STOP_STRINGS = 64
DEFAULT_MAX_STOP_LENGTH = 256
# JSON of the sampling parameters (and the request parameters): what the stop-string
# limits allow, escaped at worst (\uXXXX surrogate pairs: 12 bytes a character), plus 64 KiB for the rest.
PARAMETER_BYTES_BASE = 64 * KIB


class RequestRefused(ValueError):
    """This request cannot be served as asked; the message names the limit and the fix."""


class Overloaded(RequestRefused):
    """The request is fine but the model has no room for it now (the KV cache is full, the model is
    unloading): retrying later can succeed, unlike the other refusals."""


@dataclass(frozen=True)
class EngineLimits:
    """What one request may ask of a model; ``0`` turns a request limit off.

    ``max_prompt_bytes`` None is the default derived from the context
    (context × :data:`PROMPT_BYTES_PER_TOKEN`).
    """

    context_length: int
    kv_budget_bytes: int
    max_batch: int = 16
    max_prompt_bytes: Optional[int] = None
    max_stop_strings: int = DEFAULT_MAX_STOP_STRINGS
    max_stop_length: int = DEFAULT_MAX_STOP_LENGTH

    @property
    def prompt_bytes(self) -> int:
        """The prompt byte limit in force (0: none)."""
        if self.max_prompt_bytes is None:
            return self.context_length * PROMPT_BYTES_PER_TOKEN
        return self.max_prompt_bytes

    @property
    def parameter_bytes(self) -> int:
        """The limit on the JSON of one request's sampling parameters (0: none)."""
        if not self.max_stop_strings or not self.max_stop_length:
            return 0
        return PARAMETER_BYTES_BASE + 12 * self.max_stop_strings * self.max_stop_length

    def check_prompt_bytes(self, size: int) -> None:
        """Before tokenizing: a prompt of ``size`` UTF-8 bytes, or :class:`RequestRefused`."""
        limit = self.prompt_bytes
        if limit and size > limit:
            raise RequestRefused(
                f"text_input is {size} bytes, over this model's limit of {limit} bytes "
                f"({self.context_length}-token context; parameter generation.max_prompt_bytes): shorten the prompt")

    def check_parameter_bytes(self, size: int) -> None:
        """Before parsing: ``size`` bytes of sampling-parameter JSON, or :class:`RequestRefused`."""
        limit = self.parameter_bytes
        if limit and size > limit:
            raise RequestRefused(
                f"the sampling parameters are {size} bytes of JSON (sampling_parameters and request parameters), over "
                f"this model's limit of {limit} bytes (set by generation.max_stop_strings and generation.max_stop_length)")

    def check_stops(self, params: SamplingParams) -> None:
        """Stop strings within their count and length limits, or :class:`RequestRefused`."""
        count, most = len(params.stop), self.max_stop_strings
        if most and count > most:
            raise RequestRefused(f"stop has {count} strings, over this model's limit of {most} "
                                 "(parameter generation.max_stop_strings)")
        most = self.max_stop_length
        if most:
            for i, stop in enumerate(params.stop):
                if len(stop) > most:
                    raise RequestRefused(f"stop string {i} is {len(stop)} characters, over this model's limit of "
                                         f"{most} (parameter generation.max_stop_length)")


@dataclass
class Output:
    """What a sequence produced since the last call (``finish_reason`` set on the last one)."""

    text: str
    token_ids: List[int]
    finish_reason: Optional[str] = None  # "stop", "length", "cancelled", or None while running
    error: Optional[str] = None
    #: Sum of the generated tokens' log-probabilities so far (when the request asked for logprobs).
    cumulative_logprob: float = 0.0
    #: Per token of ``token_ids`` (when ``logprobs`` was asked): {token id: (logprob, rank)} of the
    #: sampled token and the top alternatives, vLLM's shape.
    logprobs: Optional[List[dict]] = None


@dataclass
class GenerationRequest:
    prompt_ids: List[int]
    params: SamplingParams
    #: Called from the engine thread with each new piece of output; the last has finish_reason or error.
    on_output: Callable[[Output], None]
    is_cancelled: Callable[[], bool] = lambda: False
    submitted: float = field(default_factory=time.perf_counter)
    #: Compute each token's log-probability (``return_cumulative_logprob``); ``params.logprobs`` implies it.
    want_logprob: bool = False


class _Sequence:
    def __init__(self, request: GenerationRequest, tokenizer: BundleTokenizer, reserved: int, max_new: int,
                 early_banned: np.ndarray, grammar=None):
        self.request = request
        self.grammar = grammar  # a GrammarMatcher for structured output, else None (no cost)
        self.want_logprob = request.want_logprob or request.params.logprobs is not None
        self.cumulative_logprob = 0.0
        self.pending_logprobs: List[dict] = []
        self.params = request.params
        self.sampler = Sampler(request.params)
        self.detok = IncrementalDetokenizer(tokenizer, request.params.skip_special_tokens)
        self.stops = StopMatcher(request.params.stop)
        self.stop_ids = frozenset(request.params.stop_token_ids)
        self.early_banned = early_banned  # ids banned until min_tokens are out
        self.reserved = reserved
        self.max_new = max_new  # max_tokens, cut to what the context leaves
        self.generated: List[int] = []
        self.text = ""  # generated text, stop string handling applied
        self.emitted = 0  # characters of self.text already handed out
        self.pending_ids: List[int] = []  # tokens whose text is not handed out yet
        self.finish: Optional[str] = None


class GenerationEngine:
    def __init__(self, decoder: Decoder, tokenizer: BundleTokenizer, eos_ids: Sequence[int], limits: EngineLimits,
                 log: Callable[[str], None] = lambda message: None, vocab_size: Optional[int] = None,
                 grammars=None):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.limits = limits
        #: Logit rows a sampler chooses from (the model's vocabulary; the tokenizer's when the bundle does not say).
        self.vocab_size = int(vocab_size or tokenizer.vocab_size)
        self.log = log
        #: Builds structured-output matchers (``grammar.GrammarCompiler``); None: guided_* is refused.
        self.grammars = grammars
        self.bytes_per_token = decoder.layout.bytes_per_token()
        self._lock = threading.Condition()
        self._waiting: List[_Sequence] = []
        self._reserved = 0
        self._batch = DecodeBatch(decoder)
        self._active: List[_Sequence] = []  # row i of the batch
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        #: Counters for /metrics and benchmarks.
        self.steps = 0
        self.tokens = 0
        self.forward_s = 0.0  # seconds in decode passes (prefills excluded)

    # -- accepting requests (any thread) ----------------------------------------------
    def early_banned(self, params: SamplingParams) -> np.ndarray:
        """Token ids the sampler may not pick before ``min_tokens`` are out: the end-of-sequence
        ids and ``stop_token_ids`` that are in the vocabulary (an id past it bans nothing)."""
        if not params.min_tokens:
            return np.zeros(0, np.int64)
        ids = {*self.eos_ids, *params.stop_token_ids}
        return np.fromiter(sorted(i for i in ids if 0 <= i < self.vocab_size), np.int64)

    def check_params(self, params: SamplingParams) -> np.ndarray:
        """Refuse, naming the parameter, what the request's limits or its sampling parameters make
        unservable; cheap (no tokenizing, no model), so it runs before the expensive work.
        Returns :meth:`early_banned`."""
        self.limits.check_stops(params)
        banned = self.early_banned(params)
        if len(banned) >= self.vocab_size:
            raise RequestRefused(
                f"min_tokens={params.min_tokens} leaves no token to sample: the end-of-sequence token and "
                f"stop_token_ids ban all {self.vocab_size} tokens of the vocabulary until min_tokens are out "
                "(lower min_tokens or list fewer stop_token_ids)")
        return banned

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request, or raise :class:`RequestRefused` naming the limit it breaks."""
        banned = self.check_params(request.params)
        prompt = len(request.prompt_ids)
        context = self.limits.context_length
        if prompt == 0:
            raise RequestRefused("text_input is empty: the prompt needs at least one token")
        if prompt >= context:
            raise RequestRefused(
                f"the prompt is {prompt} tokens and the model's context is {context}: "
                "shorten the prompt (generation needs at least one free position)")
        max_new = min(request.params.max_tokens, context - prompt)
        need = (prompt + max_new) * self.bytes_per_token
        budget = self.limits.kv_budget_bytes
        # Built outside the lock, which the loop takes every step (a grammar compiles here, on the caller's thread).
        sequence = _Sequence(request, self.tokenizer, need, max_new, banned, self.grammar_matcher(request.params))
        with self._lock:
            if self._stopping:
                raise Overloaded("the model is being unloaded; retry once it is loaded again")
            if need > budget:
                raise RequestRefused(
                    f"this request needs {need / MIB:.1f} MiB of KV cache ({prompt} prompt + {max_new} new tokens) "
                    f"and the budget is {budget / MIB:.0f} MiB: lower max_tokens or raise the model parameter "
                    "generation.kv_cache_mb")
            if self._reserved + need > budget:
                running = len(self._active) + len(self._waiting)
                raise Overloaded(
                    f"KV cache full: this request needs {need / MIB:.1f} MiB and {running} running requests hold "
                    f"{self._reserved / MIB:.1f} of {budget / MIB:.0f} MiB; retry later, lower max_tokens, or raise "
                    "generation.kv_cache_mb")
            self._reserved += need
            self._waiting.append(sequence)
            self._lock.notify()

    def grammar_matcher(self, params: SamplingParams):
        """The request's structured-output matcher (None without guided_*); SamplingError names a bad grammar."""
        if params.guided is None:
            return None
        if self.grammars is None:
            raise RequestRefused(f"{params.guided[0]}: this model serves no structured output "
                                 "(its tokenizer could not be read by the grammar library)")
        return self.grammars.matcher(params)

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    # -- the loop (one thread) ------------------------------------------------------------
    def start(self) -> "GenerationEngine":
        self._thread = threading.Thread(target=self._run, name="portable-ep-generation", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """The loop thread is still alive (e.g. ``stop`` timed out in the middle of a long pass)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._active:
                    self._lock.wait()
                if self._stopping:
                    break
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a bug must end the sequences it touched, never the loop
                self.log(f"generation step failed: {type(exc).__name__}: {exc}")
                for seq in self._active:
                    if seq.reserved:
                        self._finish(seq, error=f"generation failed: {type(exc).__name__}: {exc}")
                self._active, self._batch = [], DecodeBatch(self.decoder)
        for seq in self._active + self._waiting:
            if seq.reserved:  # not answered yet
                self._finish(seq, error="the model is being unloaded")

    def idle(self) -> bool:
        with self._lock:
            return not self._waiting and not self._active

    def step(self) -> None:
        """One turn: drop cancelled, admit waiting, one decode pass for the batch."""
        self._drop_cancelled()
        self._admit()
        if not self._active:
            return
        tokens = [seq.generated[-1] for seq in self._active]
        try:
            _t = time.perf_counter()
            logits = self._batch.step(tokens)
            self.forward_s += time.perf_counter() - _t
        except Exception as exc:  # noqa: BLE001 - the whole pass failed: every row's request gets the cause
            from portable_ep.exporters.errors import runtime_cause

            cause = runtime_cause(exc)
            self.log(f"decode step of {len(self._active)} sequences failed: {exc}")
            for seq in self._active:
                self._finish(seq, error=f"decode step failed: {cause}")
            self._active, self._batch = [], DecodeBatch(self.decoder)
            return
        self.steps += 1
        for seq, row in zip(self._active, logits):
            self._take_or_fail(seq, row)
        self._remove_finished()

    def _drop_cancelled(self) -> None:
        with self._lock:
            cancelled = [seq for seq in self._waiting if _cancelled(seq)]
            for seq in cancelled:
                self._waiting.remove(seq)
        for seq in cancelled:
            self._finish(seq, finish="cancelled")
        for seq in self._active:
            if seq.finish is None and _cancelled(seq):
                seq.finish = "cancelled"
        self._remove_finished()

    def _admit(self) -> None:
        while len(self._active) < self.limits.max_batch:
            with self._lock:
                if not self._waiting:
                    return
                seq = self._waiting.pop(0)
            try:
                row = self._batch.add(seq.request.prompt_ids)
            except Exception as exc:  # noqa: BLE001 - this prompt's pass failed; the batch is untouched
                from portable_ep.exporters.errors import runtime_cause

                self.log(f"prefill of a {len(seq.request.prompt_ids)}-token prompt failed: {exc}")
                self._finish(seq, error=f"prefill failed: {runtime_cause(exc)}")
                continue
            self._active.append(seq)
            self._take_or_fail(seq, row)
            self._remove_finished()

    def _take_or_fail(self, seq: _Sequence, logits: np.ndarray) -> None:
        """``_take``; a failure (a sampler error on odd logits) ends this sequence alone, with its cause."""
        try:
            self._take(seq, logits)
        except Exception as exc:  # noqa: BLE001 - this request's problem; the batch decodes on
            self.log(f"sampling failed: {type(exc).__name__}: {exc}")
            if seq.reserved:
                self._finish(seq, error=f"sampling failed: {type(exc).__name__}: {exc}")
            if not seq.generated:
                seq.generated.append(0)  # keeps the row's step input defined until it is removed

    def _take(self, seq: _Sequence, logits: np.ndarray) -> None:
        """Sample the sequence's next token and hand out the text it completes."""
        params = seq.params
        early = len(seq.generated) < params.min_tokens
        banned = seq.early_banned if early else ()
        raw = logits
        if seq.grammar is not None:
            logits = seq.grammar.mask(logits)
        token = seq.sampler(logits, seq.request.prompt_ids, banned, seq.generated)
        seq.generated.append(token)
        self.tokens += 1
        if seq.want_logprob:
            self._record_logprob(seq, raw, token)
        if not params.ignore_eos and token in self.eos_ids or token in seq.stop_ids:
            seq.finish = "stop"
            seq.pending_ids.append(token)  # counted as output (vLLM counts the end-of-sequence token), never shown
            before = len(seq.text)
            seq.text += seq.detok.flush()  # a character held back for its last bytes
            self._apply_stop_strings(seq, before)
            self._emit(seq, final=True)
            return
        seq.pending_ids.append(token)
        before = len(seq.text)
        seq.text += seq.detok.add(token)
        complete = False
        if seq.grammar is not None:
            seq.grammar.take(token)
            complete = seq.grammar.complete  # nothing may follow but the end: stop now, not a step later
        if len(seq.generated) >= seq.max_new or complete:
            seq.text += seq.detok.flush()
        if self._apply_stop_strings(seq, before) or complete:
            seq.finish = "stop"
        elif len(seq.generated) >= seq.max_new:
            seq.finish = "length"
        self._emit(seq, final=seq.finish is not None)

    @staticmethod
    def _record_logprob(seq: _Sequence, logits: np.ndarray, token: int) -> None:
        """The token's log-probability under the model's own distribution (the raw logits, before
        penalties, temperature and grammar: vLLM's default), and the top alternatives when asked."""
        row = np.asarray(logits, np.float64)
        top = row.max()
        log_probs = row - (top + np.log(np.exp(row - top).sum()))
        value = float(log_probs[token])
        seq.cumulative_logprob += value
        wanted = seq.params.logprobs
        if wanted is None:
            return
        entry = {int(token): (value, int((log_probs > value).sum()) + 1)}
        if wanted:
            best = np.argpartition(-log_probs, wanted - 1)[:wanted] if wanted < len(log_probs) else np.arange(len(log_probs))
            for rank, i in enumerate(best[np.argsort(-log_probs[best])], start=1):
                entry.setdefault(int(i), (float(log_probs[i]), rank))
        seq.pending_logprobs.append(entry)

    def _apply_stop_strings(self, seq: _Sequence, before: int) -> bool:
        """Cut the text at the first stop string; ``before``: its length before the newest piece."""
        if not seq.stops:
            return False
        found = seq.stops.feed(seq.text[before:])  # only the newest piece is new to the matcher
        if found is None:
            return False
        index, length = found
        seq.text = seq.text[: index + (length if seq.params.include_stop_str_in_output else 0)]
        seq.emitted = min(seq.emitted, len(seq.text))
        return True

    def _emit(self, seq: _Sequence, final: bool) -> None:
        end = len(seq.text)
        if not final and seq.stops:
            end -= seq.stops.held_back  # could be the start of a stop string
        if end <= seq.emitted and not final:
            return
        delta, seq.emitted = seq.text[seq.emitted:end], max(seq.emitted, end)
        ids, seq.pending_ids = seq.pending_ids, []
        logprobs, seq.pending_logprobs = (seq.pending_logprobs, []) if seq.params.logprobs is not None else (None, [])
        output = Output(delta, ids, seq.finish if final else None, cumulative_logprob=seq.cumulative_logprob,
                        logprobs=logprobs)
        self._deliver(seq, output)
        if final:
            self._release(seq)

    def _finish(self, seq: _Sequence, finish: Optional[str] = None, error: Optional[str] = None) -> None:
        seq.finish = finish or "error"
        self._deliver(seq, Output("", [], finish, error))
        self._release(seq)

    def _deliver(self, seq: _Sequence, output: Output) -> None:
        try:
            seq.request.on_output(output)
        except Exception as exc:  # noqa: BLE001 - a client that went away must not stop the loop
            self.log(f"could not deliver generated text: {exc}")
            if seq.finish is None:
                seq.finish = "cancelled"

    def _release(self, seq: _Sequence) -> None:
        with self._lock:
            self._reserved -= seq.reserved
            seq.reserved = 0

    def _remove_finished(self) -> None:
        done = [i for i, seq in enumerate(self._active) if seq.finish is not None]
        if not done:
            return
        for i in done:
            seq = self._active[i]
            if seq.reserved:  # cancelled or dropped without a final output yet
                self._finish(seq, finish=seq.finish)
        self._batch.remove(done)
        self._active = [seq for i, seq in enumerate(self._active) if i not in set(done)]


def _cancelled(seq: _Sequence) -> bool:
    try:
        return bool(seq.request.is_cancelled())
    except Exception:  # noqa: BLE001 - a sender that cannot say is a client that is gone
        return True

