"""Streaming a generative model over Triton's gRPC stream, with the timings LLM users quote.

Used by ``portable-ep check``, the demo, the benchmark and the tests. Each
:class:`StreamingClient` holds one gRPC stream (tritonclient allows one per client), so
concurrency N means N clients on N threads.
"""
from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np


class GenerationFailed(RuntimeError):
    """The server answered the request with an error (the message is the server's)."""


@dataclass
class StreamResult:
    text: str
    #: Seconds from sending to the first text, and between later responses.
    ttft_s: float
    gaps_s: List[float] = field(default_factory=list)
    total_s: float = 0.0
    responses: int = 0


#: vLLM's optional BOOL inputs, each asking for one more output on every response.
RETURN_INPUTS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens",
                 "return_cumulative_logprob", "return_logprobs")


def generation_inputs(module, prompt: str, stream: bool, sampling: Optional[dict] = None,
                      exclude_input_in_output: Optional[bool] = None, returns: Sequence[str] = ()) -> list:
    """vLLM-style inputs for tritonclient's ``grpc`` or ``http`` module; ``returns``: names from
    :data:`RETURN_INPUTS` to set true (``finish_reason``, token counts, log-probabilities)."""
    inputs = [module.InferInput("text_input", [1], "BYTES"), module.InferInput("stream", [1], "BOOL")]
    inputs[0].set_data_from_numpy(np.array([prompt.encode("utf-8")], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([stream], dtype=bool))
    if sampling is not None:
        tensor = module.InferInput("sampling_parameters", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([json.dumps(sampling).encode("utf-8")], dtype=np.object_))
        inputs.append(tensor)
    if exclude_input_in_output is not None:
        tensor = module.InferInput("exclude_input_in_output", [1], "BOOL")
        tensor.set_data_from_numpy(np.array([exclude_input_in_output], dtype=bool))
        inputs.append(tensor)
    for name in returns:
        if name not in RETURN_INPUTS:
            raise ValueError(f"{name} is not one of vLLM's optional inputs ({', '.join(RETURN_INPUTS)})")
        tensor = module.InferInput(name, [1], "BOOL")
        tensor.set_data_from_numpy(np.array([True]))
        inputs.append(tensor)
    return inputs


class StreamingClient:
    def __init__(self, url: str, model: str, timeout_s: float = 300.0):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.model = model
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)
        self._responses: "queue.Queue" = queue.Queue()
        self._client.start_stream(callback=lambda result, error: self._responses.put((time.perf_counter(), result, error)))
        self._ids = 0

    def generate(self, prompt: str, sampling: Optional[dict] = None, stream: bool = True,
                 on_text: Optional[Callable[[str], None]] = None) -> StreamResult:
        """Send one request and wait for its final response; GenerationFailed on a server error."""
        self._ids += 1
        request_id = str(self._ids)
        started = time.perf_counter()
        self._client.async_stream_infer(self.model, generation_inputs(self._grpc, prompt, stream, sampling),
                                        request_id=request_id, enable_empty_final_response=True)
        pieces: List[str] = []
        times: List[float] = []
        while True:
            try:
                arrived, result, error = self._responses.get(timeout=self.timeout_s)
            except queue.Empty:
                raise GenerationFailed(f"no response in {self.timeout_s:.0f} s") from None
            if error is not None:
                raise GenerationFailed(str(error.message() if hasattr(error, "message") else error))
            response = result.get_response()
            if response.id != request_id:
                continue  # a late response of an earlier, abandoned request
            final = response.parameters["triton_final_response"].bool_param
            if response.outputs:
                text = result.as_numpy("text_output")[0].decode("utf-8")
                if text:
                    pieces.append(text)
                    times.append(arrived)
                    if on_text is not None:
                        on_text(text)
            if final:
                done = time.perf_counter()
                break
        first = times[0] if times else done
        return StreamResult("".join(pieces), first - started, [b - a for a, b in zip(times, times[1:])], done - started,
                            len(times))

    def close(self) -> None:
        try:
            self._client.stop_stream()
        finally:
            self._client.close()

    def __enter__(self) -> "StreamingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
