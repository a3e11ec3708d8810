"""Triton's gRPC API as the frontend speaks it (grpc.aio over tritonclient's protobufs).

Generation goes through ``ModelStreamInfer``, one stream per HTTP request, with two request
options tritonclient's asyncio client cannot set: ``triton_enable_empty_final_response``
(a decoupled model may end a stream with an empty, final response, which must reach us to
know the answer is complete) and the ``triton_grpc_error: true`` header (Triton then ends the
stream with the request's real gRPC status code, INVALID_ARGUMENT for a refused request,
instead of a bare message; see :func:`refusal_before_the_model` for what still comes bare).
Encoders go through the unary ``ModelInfer``.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import AsyncIterator, Dict, List, Optional, Sequence

import grpc
import numpy as np

from portable_ep.openai_api.errors import APIError, from_grpc

# Prompts and embedding batches can be large; Triton's own default limit is 2 GB.
_MAX_MESSAGE = 256 * 1024 * 1024
_STREAM_ERRORS = (("triton_grpc_error", "true"),)


@dataclass
class Piece:
    """One response of a generation stream."""
    text: str
    final: bool
    finish_reason: Optional[str] = None
    num_input_tokens: Optional[int] = None
    num_output_tokens: Optional[int] = None


def _bytes_tensor(request, name: str, value: bytes) -> None:
    from tritonclient.utils import serialize_byte_tensor

    request.inputs.add(name=name, datatype="BYTES", shape=[1])
    # raw_input_contents follow the order of the inputs; serialize_byte_tensor gives a 0-d object array
    request.raw_input_contents.append(serialize_byte_tensor(np.array([value], dtype=np.object_)).item())


def _bool_tensor(request, name: str, value: bool) -> None:
    request.inputs.add(name=name, datatype="BOOL", shape=[1])
    request.raw_input_contents.append(np.array([value], dtype=bool).tobytes())


class TritonGrpc:
    """An asyncio gRPC channel to one tritonserver (create it inside the event loop that uses it)."""

    def __init__(self, url: str):
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._pb = service_pb2
        self._channel = grpc.aio.insecure_channel(url, options=[("grpc.max_send_message_length", _MAX_MESSAGE),
                                                                ("grpc.max_receive_message_length", _MAX_MESSAGE)])
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def repository_index(self) -> List[dict]:
        from google.protobuf.json_format import MessageToDict

        response = await self._stub.RepositoryIndex(self._pb.RepositoryIndexRequest(), timeout=10)
        return [MessageToDict(model, preserving_proto_field_name=True) for model in response.models]

    async def model_config(self, name: str) -> dict:
        from google.protobuf.json_format import MessageToDict

        response = await self._stub.ModelConfig(self._pb.ModelConfigRequest(name=name), timeout=10)
        return MessageToDict(response.config, preserving_proto_field_name=True)

    async def generate(self, model: str, prompt: str, sampling: dict, stream: bool,
                       return_inputs: Sequence[str] = ()) -> AsyncIterator[Piece]:
        """The model's responses to one request; APIError when Triton refuses or fails it.

        Leaving the iteration early (the HTTP client went away) cancels the gRPC call, which
        Triton passes on to the model as a cancelled request.
        """
        request = self._pb.ModelInferRequest(model_name=model, id="openai")
        _bytes_tensor(request, "text_input", prompt.encode("utf-8"))
        _bool_tensor(request, "stream", stream)
        _bytes_tensor(request, "sampling_parameters", json.dumps(sampling).encode("utf-8"))
        _bool_tensor(request, "exclude_input_in_output", True)
        for name in return_inputs:
            _bool_tensor(request, name, True)
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        finished = asyncio.Event()

        async def requests():
            yield request
            await finished.wait()  # keep our side open until the last response has come

        call = self._stub.ModelStreamInfer(requests(), metadata=_STREAM_ERRORS)
        try:
            async for response in call:
                if response.error_message:
                    raise refusal_before_the_model(response.error_message, model)
                piece = _piece(response.infer_response)
                if piece.final:
                    finished.set()
                yield piece
                if piece.final:
                    return
            raise APIError(500, f"the model '{model}' ended its stream without a final response")
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc.code(), exc.details() or "", model) from None
        finally:
            finished.set()
            call.cancel()

    async def infer(self, model: str, feeds: Dict[str, np.ndarray], output: str) -> np.ndarray:
        """One unary request to a non-decoupled model; ``feeds`` hold INT64/INT32 arrays."""
        from tritonclient.grpc import InferResult
        from tritonclient.utils import np_to_triton_dtype

        request = self._pb.ModelInferRequest(model_name=model)
        for name, array in feeds.items():
            request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=list(array.shape))
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        request.outputs.add(name=output)
        try:
            response = await self._stub.ModelInfer(request, timeout=300)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc.code(), exc.details() or "", model) from None
        return InferResult(response).as_numpy(output)


def refusal_before_the_model(message: str, model: str) -> APIError:
    """A stream error that came as a bare message, without a gRPC status.

    With ``triton_grpc_error`` Triton gives a status code for every error a model answers with;
    what still arrives as a bare message on Triton 2.51 is Triton refusing the request before
    any model saw it (measured: an unknown model, an input the model does not declare, a
    wrong count of inputs): the request's fault, or a model that is not there.
    """
    lowered = message.lower()
    if "unknown model" in lowered or "is not found" in lowered:
        return from_grpc(grpc.StatusCode.NOT_FOUND, message, model)
    if "not ready" in lowered or "no available version" in lowered or "unavailable" in lowered:
        return from_grpc(grpc.StatusCode.UNAVAILABLE, message, model)
    return from_grpc(grpc.StatusCode.INVALID_ARGUMENT, message, model)


def _piece(response) -> Piece:
    from tritonclient.grpc import InferResult

    final = response.parameters["triton_final_response"].bool_param if "triton_final_response" in response.parameters else True
    if not response.outputs:
        return Piece("", final)
    result = InferResult(response)
    names = {output.name for output in response.outputs}

    def scalar(name):
        return result.as_numpy(name).reshape(-1)[0] if name in names else None

    text = scalar("text_output")
    reason = scalar("finish_reason")
    n_in, n_out = scalar("num_input_tokens"), scalar("num_output_tokens")
    return Piece(text.decode("utf-8") if isinstance(text, bytes) else (text or ""), final,
                 reason.decode("utf-8") if isinstance(reason, bytes) else reason,
                 int(n_in) if n_in is not None else None, int(n_out) if n_out is not None else None)
