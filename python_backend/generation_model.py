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
- ``text_output`` (BYTES [-1]).

Parameters of the model (config.pbtxt): ``generation.kv_cache_mb`` (the cache budget,
default 1024), ``generation.max_batch`` (sequences decoding together, default 16),
``generation.max_context`` (a context shorter than the model's).
"""
from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from portable_ep.generation.bundle import bundle_engine
from portable_ep.generation.decoder import NotADecoder
from portable_ep.generation.engine import GenerationEngine, GenerationRequest, Output, RequestRefused
from portable_ep.generation.sampling import SamplingError, SamplingParams, convert_value
from portable_ep.generation.tokenizer import BundleTokenizer
from portable_ep.python_backend.model_config import ModelConfigError, ServingConfig
from portable_ep.python_backend.model_loader import ResolvedSession, resolve_session

TASK = "text-generation"
DEFAULT_KV_CACHE_MB = 1024
DEFAULT_MAX_BATCH = 16
OUTPUT = "text_output"


class BadRequest(ValueError):
    """The request's inputs are wrong; the message names the input."""


def is_generative(version_dir: Path) -> bool:
    """Does the version folder hold a generative bundle?"""
    manifest = Path(version_dir) / "manifest.json"
    if not manifest.is_file():
        return False
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
        return (f"context {limits.context_length} tokens, KV cache budget {limits.kv_budget_bytes / (1 << 20):g} MiB "
                f"({limits.kv_budget_bytes // self.engine.bytes_per_token} tokens), up to {limits.max_batch} sequences per step")


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
    resolved = resolve_session(config, version_dir, device_id, registry, match_config=False)
    session = resolved.resolution.session
    try:
        engine = bundle_engine(session, resolved.artifacts.root, resolved.artifacts.manifest, int(kv_mb * (1 << 20)),
                               max_batch, max_context, log=log)
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


def parse_request(request, pb):
    """(prompt text, stream, exclude_input_in_output, SamplingParams) or BadRequest/SamplingError."""
    text = _scalar(request, "text_input", pb)
    if text is None:
        raise BadRequest("input text_input is missing: send the prompt as a BYTES tensor of shape [1]")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"text_input is not UTF-8 (byte {exc.start})") from None
    try:
        parameters = json.loads(request.parameters() or "{}")
    except ValueError:
        parameters = {}
    stream = _flag(request, "stream", parameters, pb)
    exclude = _flag(request, "exclude_input_in_output", parameters, pb)
    sampling = _scalar(request, "sampling_parameters", pb)
    if isinstance(sampling, bytes):
        sampling = sampling.decode("utf-8", errors="replace")
    return str(text), stream, exclude, SamplingParams.from_request(sampling, parameters)


class ResponseStream:
    """Turns the engine's outputs for one request into Triton responses on its sender."""

    def __init__(self, pb, sender, prompt: str, stream: bool, exclude_input: bool, on_done=None,
                 log_info=lambda message: None):
        self.pb, self.sender = pb, sender
        self.stream = stream
        # vLLM's rule: the prompt is prepended to a non-streamed answer unless excluded.
        self.text = "" if (stream or exclude_input) else prompt
        self.on_done = on_done
        self.log_info = log_info
        self.tokens = 0

    def _response(self, text: str):
        return self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(OUTPUT, np.array([text.encode("utf-8")], dtype=np.object_))])

    def __call__(self, output: Output) -> None:
        pb, final_flag = self.pb, self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self.tokens += len(output.token_ids)
        final = output.finish_reason is not None or output.error is not None
        if output.error is not None:
            self.sender.send(pb.InferenceResponse(error=pb.TritonError(output.error)), flags=final_flag)
        elif output.finish_reason == "cancelled":
            self.log_info(f"request cancelled by the client after {self.tokens} tokens; its cache is released")
            self.sender.send(pb.InferenceResponse(error=pb.TritonError("request was cancelled", pb.TritonError.CANCELLED)),
                             flags=final_flag)
        elif self.stream:
            if output.text:
                self.sender.send(self._response(output.text), flags=final_flag if final else 0)
            elif final:
                self.sender.send(flags=final_flag)
        else:
            self.text += output.text
            if final:
                self.sender.send(self._response(self.text), flags=final_flag)
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

    def execute(self, requests):
        pb = self.pb
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt, stream, exclude, params = parse_request(request, pb)
                responses = ResponseStream(pb, sender, prompt, stream, exclude, on_done=self._done,
                                           log_info=self.log_info)
                self.engine.submit(GenerationRequest(self.tokenizer.encode(prompt), params, self.sender.wrap(responses),
                                                     is_cancelled=sender.is_cancelled))
            except (BadRequest, SamplingError, RequestRefused) as exc:
                self._refuse(sender, str(exc))
            except Exception as exc:  # noqa: BLE001 - this request only; the model keeps serving
                self._refuse(sender, f"could not start generating: {type(exc).__name__}: {exc}")
        return None

    def _refuse(self, sender, message: str) -> None:
        pb = self.pb
        sender.send(pb.InferenceResponse(error=pb.TritonError(message)), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if self.metrics is not None:
            self.metrics.record_execution(1, 1, 0.0)

    def _done(self, output: Output) -> None:
        if self.metrics is not None:  # cancelled and failed requests count as errors
            failed = output.error is not None or output.finish_reason == "cancelled"
            self.metrics.record_execution(1, int(failed), 0.0)

    def finalize(self) -> None:
        self.engine.stop()
        self.sender.close()
        if not self.engine.running:  # never pull the session from under a pass still running
            self.loaded.resolved.resolution.session.close()
