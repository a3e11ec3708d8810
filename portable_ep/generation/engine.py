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
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from portable_ep.generation.decoder import DecodeBatch, Decoder
from portable_ep.generation.sampling import Sampler, SamplingParams
from portable_ep.generation.tokenizer import BundleTokenizer, IncrementalDetokenizer

MIB = 1 << 20


class RequestRefused(ValueError):
    """This request cannot be served as asked; the message names the limit and the fix."""


@dataclass(frozen=True)
class EngineLimits:
    context_length: int
    kv_budget_bytes: int
    max_batch: int = 16


@dataclass
class Output:
    """What a sequence produced since the last call (``finish_reason`` set on the last one)."""

    text: str
    token_ids: List[int]
    finish_reason: Optional[str] = None  # "stop", "length", "cancelled", or None while running
    error: Optional[str] = None


@dataclass
class GenerationRequest:
    prompt_ids: List[int]
    params: SamplingParams
    #: Called from the engine thread with each new piece of output; the last has finish_reason or error.
    on_output: Callable[[Output], None]
    is_cancelled: Callable[[], bool] = lambda: False
    submitted: float = field(default_factory=time.perf_counter)


class _Sequence:
    def __init__(self, request: GenerationRequest, tokenizer: BundleTokenizer, reserved: int, max_new: int):
        self.request = request
        self.params = request.params
        self.sampler = Sampler(request.params)
        self.detok = IncrementalDetokenizer(tokenizer, request.params.skip_special_tokens)
        self.reserved = reserved
        self.max_new = max_new  # max_tokens, cut to what the context leaves
        self.generated: List[int] = []
        self.text = ""  # generated text, stop string handling applied
        self.emitted = 0  # characters of self.text already handed out
        self.pending_ids: List[int] = []  # tokens whose text is not handed out yet
        self.finish: Optional[str] = None


class GenerationEngine:
    def __init__(self, decoder: Decoder, tokenizer: BundleTokenizer, eos_ids: Sequence[int], limits: EngineLimits,
                 log: Callable[[str], None] = lambda message: None):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.limits = limits
        self.log = log
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
    def submit(self, request: GenerationRequest) -> None:
        """Queue a request, or raise :class:`RequestRefused` naming the limit it breaks."""
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
        with self._lock:
            if self._stopping:
                raise RequestRefused("the model is being unloaded; retry once it is loaded again")
            if need > budget:
                raise RequestRefused(
                    f"this request needs {need / MIB:.1f} MiB of KV cache ({prompt} prompt + {max_new} new tokens) "
                    f"and the budget is {budget / MIB:.0f} MiB: lower max_tokens or raise the model parameter "
                    "generation.kv_cache_mb")
            if self._reserved + need > budget:
                running = len(self._active) + len(self._waiting)
                raise RequestRefused(
                    f"KV cache full: this request needs {need / MIB:.1f} MiB and {running} running requests hold "
                    f"{self._reserved / MIB:.1f} of {budget / MIB:.0f} MiB; retry later, lower max_tokens, or raise "
                    "generation.kv_cache_mb")
            self._reserved += need
            self._waiting.append(_Sequence(request, self.tokenizer, need, max_new))
            self._lock.notify()

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
        banned = (*self.eos_ids, *params.stop_token_ids) if early else ()
        token = seq.sampler(logits, seq.request.prompt_ids, banned, seq.generated)
        seq.generated.append(token)
        self.tokens += 1
        if not params.ignore_eos and token in self.eos_ids or token in params.stop_token_ids:
            seq.finish = "stop"
            before = len(seq.text)
            seq.text += seq.detok.flush()  # a character held back for its last bytes
            self._apply_stop_strings(seq, before)
            self._emit(seq, final=True)
            return
        seq.pending_ids.append(token)
        before = len(seq.text)
        seq.text += seq.detok.add(token)
        if len(seq.generated) >= seq.max_new:
            seq.text += seq.detok.flush()
        if self._apply_stop_strings(seq, before):
            seq.finish = "stop"
        elif len(seq.generated) >= seq.max_new:
            seq.finish = "length"
        self._emit(seq, final=seq.finish is not None)

    def _apply_stop_strings(self, seq: _Sequence, before: int) -> bool:
        """Cut the text at the first stop string; ``before``: its length before the newest piece."""
        stops = seq.params.stop
        if not stops:
            return False
        # Only text reaching into the newest piece can complete a stop string.
        start = max(0, before - max(len(s) for s in stops) + 1)
        found = [(seq.text.find(s, start), s) for s in stops]
        found = [(index, s) for index, s in found if index >= 0]
        if not found:
            return False
        index, stop = min(found)
        seq.text = seq.text[: index + (len(stop) if seq.params.include_stop_str_in_output else 0)]
        seq.emitted = min(seq.emitted, len(seq.text))
        return True

    def _emit(self, seq: _Sequence, final: bool) -> None:
        end = len(seq.text)
        if not final and seq.params.stop:
            end -= _held_back(seq.text, seq.params.stop)  # could be the start of a stop string
        if end <= seq.emitted and not final:
            return
        delta, seq.emitted = seq.text[seq.emitted:end], max(seq.emitted, end)
        ids, seq.pending_ids = seq.pending_ids, []
        output = Output(delta, ids, seq.finish if final else None)
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


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest
