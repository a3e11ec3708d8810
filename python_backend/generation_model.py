"""Serving a generative bundle: vLLM's Triton I/O over portable-ep's provider chain.

The model is decoupled: ``execute`` hands each request to the
:class:`~portable_ep.generation.engine.GenerationEngine` and returns at once; the
engine's thread sends the responses (one per text delta when ``stream`` is true, else
one with the whole text), the last one flagged final. The I/O is vLLM's backend's so
its clients, genai-perf and Triton's ``/generate`` and ``/generate_stream`` work as
they are:

- ``text_input`` (BYTES [1]): the prompt exactly as the model sees it (chat template
  applied by the client);
- ``stream`` (BOOL [1], optional), ``exclude_input_in_output`` (BOOL [1], optional);
- ``sampling_parameters`` (BYTES [1], optional): JSON with vLLM's names
  (``portable_ep.generation.sampling``), also read from request parameters;
- ``text_output`` (BYTES [-1]);
- vLLM's optional outputs, each sent on every response of a request that sets its BOOL
  input: ``return_finish_reason`` → ``finish_reason`` (BYTES: "None" until the last
  response, then "stop", "length" or "abort"), ``return_num_input_tokens`` →
  ``num_input_tokens`` (UINT32, the prompt's tokens), ``return_num_output_tokens`` →
  ``num_output_tokens`` (UINT32, tokens generated since the previous response),
  ``return_cumulative_logprob`` → ``cumulative_logprob`` (FP32, the sum of the generated
  tokens' log-probabilities so far), ``return_logprobs`` → ``logprobs`` (BYTES, JSON:
  per new token ``{token id: {"logprob", "rank", "decoded_token"}}``, or ``null`` when the
  sampling parameters ask for no ``logprobs``).

Refusals carry Triton's error codes: what the client got wrong (a bad input or sampling
parameter, a limit, a prompt over the context) is INVALID_ARGUMENT (HTTP 400), a full KV
cache or an unloading model UNAVAILABLE (503, retry), anything else INTERNAL (500). A
request refused in ``execute`` is also counted by Triton as a failure
(``nv_inference_request_failure``, the model's ``fail`` statistics): Triton 2.51's python
backend reports one success flag per ``execute`` call and sets it false only when
``execute`` raises, so after the refusal is sent (which closes the request's response
sender: Triton sends nothing more for it) ``execute`` raises :class:`RefusedRequests`.
Triton then logs one line per refusal. A failure after the request was accepted (a
decode pass that fails) reaches the client as INTERNAL; Triton has already counted the
request by then, so only ``portable_ep_request_errors_total`` counts it.

Parameters of the model (config.pbtxt): ``generation.kv_cache_mb`` (the cache budget,
default 1024), ``generation.max_batch`` (sequences decoding together, default 16),
``generation.max_context`` (a context shorter than the model's), and what one request may
ask (``0`` = no limit): ``generation.max_prompt_bytes`` (default context × 32),
``generation.max_stop_strings`` (64), ``generation.max_stop_length`` (256 characters).

A request is checked cheapest first and refused alone, before the expensive work: the
prompt's bytes and the parameters' JSON size before anything is decoded or parsed, the
sampling parameters (stop-string limits, a ``min_tokens`` that leaves no token to sample)
before the prompt is tokenized, the prompt's tokens against the context and the cache
before it is queued.
"""
from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from portable_ep.generation.bundle import bundle_engine
from portable_ep.generation.decoder import NotADecoder
from portable_ep.generation.engine import (EngineLimits, GenerationEngine, GenerationRequest, Output, Overloaded,
                                          RequestRefused)
from portable_ep.generation.sampling import SamplingError, SamplingParams, convert_value
from portable_ep.generation.tokenizer import BundleTokenizer
from portable_ep.python_backend.model_config import ModelConfigError, ServingConfig
from portable_ep.python_backend.model_loader import ResolvedSession, resolve_session

TASK = "text-generation"
DEFAULT_KV_CACHE_MB = 1024
DEFAULT_MAX_BATCH = 16
OUTPUT = "text_output"
#: vLLM's optional outputs: the BOOL input that asks for each, and its output.
EXTRA_OUTPUTS = (("return_finish_reason", "finish_reason"), ("return_num_input_tokens", "num_input_tokens"),
                 ("return_num_output_tokens", "num_output_tokens"), ("return_cumulative_logprob", "cumulative_logprob"),
                 ("return_logprobs", "logprobs"))
#: vLLM's finish reasons (a cancelled request is vLLM's "abort").
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort"}


class BadRequest(ValueError):
    """The request's inputs are wrong; the message names the input."""


class RefusedRequests(Exception):
    """Raised by ``execute`` after its requests were refused, so that Triton counts them as failures."""


def is_generative(version_dir: Path) -> bool:
    """Does the version folder hold a generative bundle?"""
    manifest = Path(version_dir) / "manifest.json"
    if manifest.is_symlink() or not manifest.is_file():
        return False  # a linked manifest is not read: the ordinary loader refuses it, naming the rule
    try:
        return json.loads(manifest.read_text()).get("task") == TASK
    except (OSError, ValueError):
        return False  # the ordinary loader reports a broken manifest


def _number_parameter(config: ServingConfig, key: str, default, parse: Callable, valid: Callable, wanted: str):
    """A numeric config.pbtxt parameter, or ``default`` when absent; anything else fails the load naming it."""
    value = config.parameters.get(key, "")
    if value == "":
        return default
    try:
        number = parse(value)
    except ValueError:
        number = None
    if number is None or not valid(number):
        raise ModelConfigError(f"model {config.name!r}: parameter {key}={value!r} must be {wanted}")
    return number


@dataclass
class LoadedGenerator:
    resolved: ResolvedSession
    engine: GenerationEngine
    tokenizer: BundleTokenizer

    def describe_limits(self) -> str:
        limits = self.engine.limits
        off = lambda n, unit="": f"{n}{unit}" if n else "no limit"  # noqa: E731
        return (f"context {limits.context_length} tokens, KV cache budget {limits.kv_budget_bytes / (1 << 20):g} MiB "
                f"({limits.kv_budget_bytes // self.engine.bytes_per_token} tokens), up to {limits.max_batch} sequences per step; "
                f"per request: prompt {off(limits.prompt_bytes, ' bytes')}, stop strings {off(limits.max_stop_strings)} "
                f"of {off(limits.max_stop_length, ' characters')}")


def load_generator(config: ServingConfig, version_dir: Path, device_id: int = 0, registry=None,
                   log=lambda message: None, decoupled: bool = True) -> LoadedGenerator:
    if not decoupled:
        raise ModelConfigError(
            f"model {config.name!r} is generative: its config.pbtxt needs model_transaction_policy {{ decoupled: true }} "
            "(`portable-ep repo add` writes it)")
    kv_mb = _number_parameter(config, "generation.kv_cache_mb", DEFAULT_KV_CACHE_MB, float, lambda n: n > 0, "a number > 0")
    max_batch = _number_parameter(config, "generation.max_batch", DEFAULT_MAX_BATCH, int, lambda n: n >= 1,
                                  "an integer >= 1")
    max_context = _number_parameter(config, "generation.max_context", None, int, lambda n: n >= 2, "an integer >= 2")
    request_limits = {}  # EngineLimits fields; absent ones keep their defaults
    for name in ("max_prompt_bytes", "max_stop_strings", "max_stop_length"):
        value = _number_parameter(config, f"generation.{name}", None, int, lambda n: n >= 0, "an integer >= 0 (0: no limit)")
        if value is not None:
            request_limits[name] = value
    resolved = resolve_session(config, version_dir, device_id, registry, match_config=False)
    session = resolved.resolution.session
    try:
        engine = bundle_engine(session, resolved.artifacts.root, resolved.artifacts.manifest, int(kv_mb * (1 << 20)),
                               max_batch, max_context, log=log, **request_limits)
        tokenizer = engine.tokenizer
    except NotADecoder as exc:
        session.close()
        raise ModelConfigError(f"model {config.name!r}: {exc}") from None
    except Exception:
        session.close()
        raise
    return LoadedGenerator(resolved, engine.start(), tokenizer)


def _scalar(request, name: str, pb):
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise BadRequest(f"input {name} must hold one element, got {values.size}")
    return values[0]


def _flag(request, name: str, parameters: dict, pb) -> bool:
    """A BOOL input, else the request parameter of that name ("false" is false), else false."""
    value = _scalar(request, name, pb)
    if value is not None:
        return bool(value)
    try:
        return convert_value(name, parameters.get(name, False), "bool")
    except SamplingError as exc:
        raise BadRequest(str(exc)) from None


@dataclass(frozen=True)
class ParsedRequest:
    prompt: str
    stream: bool
    exclude_input: bool
    params: SamplingParams
    #: Names of the optional outputs asked for (``finish_reason``, ...).
    extra_outputs: frozenset = frozenset()


def parse_request(request, pb, limits: Optional[EngineLimits] = None) -> ParsedRequest:
    """The request's prompt, flags and SamplingParams, or BadRequest/SamplingError/RequestRefused.

    Sizes are checked before the work they would cost: the prompt's bytes before it is
    decoded (and tokenized, later), the JSON's bytes before it is parsed.
    """
    text = _scalar(request, "text_input", pb)
    if text is None:
        raise BadRequest("input text_input is missing: send the prompt as a BYTES tensor of shape [1]")
    if limits is not None:
        limits.check_prompt_bytes(len(text) if isinstance(text, bytes) else len(str(text).encode("utf-8")))
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"text_input is not UTF-8 (byte {exc.start})") from None
    raw_parameters = request.parameters() or "{}"
    sampling = _scalar(request, "sampling_parameters", pb)
    if limits is not None:
        limits.check_parameter_bytes(len(raw_parameters) + (len(sampling) if sampling is not None else 0))
    try:
        parameters = json.loads(raw_parameters)
    except ValueError:
        parameters = {}
    stream = _flag(request, "stream", parameters, pb)
    exclude = _flag(request, "exclude_input_in_output", parameters, pb)
    extra = frozenset(output for flag, output in EXTRA_OUTPUTS if _flag(request, flag, parameters, pb))
    if isinstance(sampling, bytes):
        sampling = sampling.decode("utf-8", errors="replace")
    return ParsedRequest(str(text), stream, exclude, SamplingParams.from_request(sampling, parameters), extra)


class ResponseStream:
    """Turns the engine's outputs for one request into Triton responses on its sender."""

    def __init__(self, pb, sender, prompt: str, stream: bool, exclude_input: bool, on_done=None,
                 log_info=lambda message: None, extra_outputs: frozenset = frozenset(), prompt_tokens: int = 0,
                 decode_token: Callable[[int], str] = str):
        self.pb, self.sender = pb, sender
        self.stream = stream
        # vLLM's rule: the prompt is prepended to a non-streamed answer unless excluded.
        self.text = "" if (stream or exclude_input) else prompt
        self.on_done = on_done
        self.log_info = log_info
        self.tokens = 0
        self.extra = extra_outputs
        self.prompt_tokens = prompt_tokens
        self.decode_token = decode_token
        self._unsent_tokens = 0  # generated since the last response (num_output_tokens)
        self._unsent_logprobs: list = []

    def _response(self, text: str, output: Optional[Output] = None):
        pb = self.pb
        tensors = [pb.Tensor(OUTPUT, np.array([text.encode("utf-8")], dtype=np.object_))]
        extra = self.extra
        if extra and output is not None:
            if "finish_reason" in extra:
                reason = FINISH_REASONS.get(output.finish_reason, str(output.finish_reason))
                tensors.append(pb.Tensor("finish_reason", np.array([reason.encode("utf-8")], dtype=np.object_)))
            if "num_input_tokens" in extra:
                tensors.append(pb.Tensor("num_input_tokens", np.array([self.prompt_tokens], dtype=np.uint32)))
            if "num_output_tokens" in extra:
                tensors.append(pb.Tensor("num_output_tokens", np.array([self._unsent_tokens], dtype=np.uint32)))
            if "cumulative_logprob" in extra:
                tensors.append(pb.Tensor("cumulative_logprob", np.array([output.cumulative_logprob], dtype=np.float32)))
            if "logprobs" in extra:
                tensors.append(pb.Tensor("logprobs", np.array([self._logprobs_json(output).encode("utf-8")], dtype=np.object_)))
        self._unsent_tokens = 0
        self._unsent_logprobs = []
        return pb.InferenceResponse(output_tensors=tensors)

    def _logprobs_json(self, output: Output) -> str:
        if output.logprobs is None:
            return "null"
        return json.dumps([{str(token): {"logprob": value, "rank": rank, "decoded_token": self.decode_token(token)}
                            for token, (value, rank) in entry.items()} for entry in self._unsent_logprobs])

    def __call__(self, output: Output) -> None:
        pb, final_flag = self.pb, self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self.tokens += len(output.token_ids)
        self._unsent_tokens += len(output.token_ids)
        if output.logprobs:
            self._unsent_logprobs.extend(output.logprobs)
        final = output.finish_reason is not None or output.error is not None
        try:
            if output.error is not None:
                self.sender.send(pb.InferenceResponse(error=pb.TritonError(output.error)), flags=final_flag)
            elif output.finish_reason == "cancelled":
                self.log_info(f"request cancelled by the client after {self.tokens} tokens; its cache is released")
                self.sender.send(pb.InferenceResponse(error=pb.TritonError("request was cancelled", pb.TritonError.CANCELLED)),
                                 flags=final_flag)
            elif self.stream:
                if output.text:
                    self.sender.send(self._response(output.text, output), flags=final_flag if final else 0)
                elif final and self.extra:  # the last figures (finish reason, counts) travel on a response of their own
                    self.sender.send(self._response("", output), flags=final_flag)
                elif final:
                    self.sender.send(flags=final_flag)
            else:
                self.text += output.text
                if final:
                    self.sender.send(self._response(self.text, output), flags=final_flag)
        finally:
            # Even when a send fails (a client that went away): a request left counted as pending would
            # read as a stall to the heartbeat and get a healthy stub killed.
            if final and self.on_done is not None:
                self.on_done(output)


class ResponseSender:
    """Sends responses on a thread of its own, in order.

    Handing a response to Triton is an IPC round trip to the server process (~0.3 ms
    here); on the engine's thread that time would be added to every decode step once per
    active sequence. Queued, it overlaps the next forward pass, which releases the GIL.
    """

    def __init__(self, log=lambda message: None):
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._log = log
        self._thread = threading.Thread(target=self._run, name="portable-ep-responses", daemon=True)
        self._thread.start()

    def wrap(self, stream: "ResponseStream"):
        return lambda output: self._queue.put((stream, output))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            stream, output = item
            try:
                stream(output)
            except Exception as exc:  # noqa: BLE001 - a client that went away; the others go on
                self._log(f"could not send generated text: {exc}")

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


class GenerationServing:
    """The decoupled TritonPythonModel body for a generative bundle."""

    def __init__(self, pb, config: ServingConfig, loaded: LoadedGenerator, metrics=None, log=lambda message: None,
                 log_info=lambda message: None):
        self.pb = pb
        self.config = config
        self.loaded = loaded
        self.engine = loaded.engine
        self.tokenizer = loaded.tokenizer
        self.metrics = metrics
        self.sender = ResponseSender(log)
        self.log_info = log_info
        self._pending = 0  # requests submitted and not yet finished: the heartbeat's measure of work
        self._pending_lock = threading.Lock()

    def progress(self) -> tuple:
        """(requests in flight, tokens generated so far): the heartbeat calls a stall no new token
        while requests are in flight (portable_ep.heartbeat)."""
        return self._pending, self.engine.tokens

    def execute(self, requests):
        pb = self.pb
        refused = []
        for request in requests:
            sender = request.get_response_sender()
            try:
                parsed = parse_request(request, pb, self.engine.limits)
                params = parsed.params
                self.engine.check_params(params)  # before tokenizing: refusals that cost nothing come first
                prompt_ids = self.tokenizer.encode(parsed.prompt)
                responses = ResponseStream(pb, sender, parsed.prompt, parsed.stream, parsed.exclude_input,
                                           on_done=self._done, log_info=self.log_info,
                                           extra_outputs=parsed.extra_outputs, prompt_tokens=len(prompt_ids),
                                           decode_token=self._decode_token)
                with self._pending_lock:
                    self._pending += 1
                try:
                    self.engine.submit(GenerationRequest(prompt_ids, params, self.sender.wrap(responses),
                                                         is_cancelled=sender.is_cancelled,
                                                         want_logprob="cumulative_logprob" in parsed.extra_outputs))
                except BaseException:
                    self._settle()
                    raise
            except Overloaded as exc:
                refused.append(self._refuse(sender, str(exc), pb.TritonError.UNAVAILABLE))
            except (BadRequest, SamplingError, RequestRefused) as exc:
                refused.append(self._refuse(sender, str(exc), pb.TritonError.INVALID_ARG))
            except Exception as exc:  # noqa: BLE001 - this request only; the model keeps serving
                refused.append(self._refuse(sender, f"could not start generating: {type(exc).__name__}: {exc}",
                                            pb.TritonError.INTERNAL))
        if refused and len(refused) == len(requests):
            # Every request of this call is answered: raising now makes Triton count them as failures
            # and sends nothing more (their senders are closed). With an accepted request in the same
            # call it would fail that one too, so then the refusals count only in our own metric.
            raise RefusedRequests("; ".join(refused))
        return None

    def _decode_token(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _refuse(self, sender, message: str, code) -> str:
        pb = self.pb
        sender.send(pb.InferenceResponse(error=pb.TritonError(message, code)), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if self.metrics is not None:
            self.metrics.record_execution(1, 1, 0.0)
        return f"request refused: {message}"

    def _settle(self) -> None:
        with self._pending_lock:
            self._pending = max(0, self._pending - 1)

    def _done(self, output: Output) -> None:
        self._settle()
        if self.metrics is not None:  # cancelled and failed requests count as errors
            failed = output.error is not None or output.finish_reason == "cancelled"
            self.metrics.record_execution(1, int(failed), 0.0)

    def finalize(self) -> None:
        self.engine.stop()
        self.sender.close()
        if not self.engine.running:  # never pull the session from under a pass still running
            self.loaded.resolved.resolution.session.close()
