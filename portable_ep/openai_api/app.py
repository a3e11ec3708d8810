"""The FastAPI application: OpenAI's four routes over Triton's gRPC API.

Nothing here runs a model: a request is checked (parameters, the prompt against the
context), translated (:mod:`~portable_ep.openai_api.translate`) and sent to Triton; the
answer is turned into OpenAI's body or server-sent events. Every failure is OpenAI's error
body with its status code, one line, never a traceback.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from portable_ep.openai_api.catalog import EMBEDDING, GENERATION, Catalog, ServedModel
from portable_ep.openai_api.errors import APIError, bad_parameter, unsupported_parameter
from portable_ep.openai_api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from portable_ep.openai_api.translate import (check_context, check_prompt_bytes, chat_prompt, completion_prompt,
                                              dump_json, embedding_texts, refuse_unsupported, sampling_parameters)
from portable_ep.openai_api.triton_grpc import Piece, TritonGrpc

#: Request bodies larger than this are refused with 413 before they are read whole.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: OpenAI's own limit on the inputs of one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
#: Requests one embeddings call keeps in flight to Triton at a time (Triton batches them).
EMBEDDING_CONCURRENCY = 64
OWNER = "portable-ep"
#: An oversized body is read (and dropped) up to this many times the limit before the 413 goes out.
DRAIN_FACTOR = 4


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes.

    The body is read here (FastAPI reads it whole anyway), so the route never sees an
    oversized one and the memory it may take is bounded by the limit.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.limit or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body is over this server's limit of {self.limit} bytes "
                                  "(portable-ep serve --openai-max-body-mb)", code="request_too_large")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            more = message.get("more_body", False)
            size += len(message.get("body", b""))
            if size <= self.limit:
                chunks.append(message.get("body", b""))
            elif not more or size > DRAIN_FACTOR * self.limit:
                # Answered once the client has sent its body (a client still sending when the answer
                # comes sees a reset connection, not the 413); a body far over the limit is cut short.
                return await _error_response(too_large)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    # pydantic names the union member it tried (e.g. "str", "list[str]"): keep the field path only
    path = [part for part in location if not (part[0].islower() and "[" in part) and part not in ("str", "int", "float")]
    param = ".".join(path) or None
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if first.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('msg', '')}", code="invalid_json")
    return APIError(400, f"Invalid value for '{param}': {first.get('msg', 'invalid')}", param=param, code="invalid_value")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class _Generation:
    """One generation request's facts, gathered as its responses arrive."""

    def __init__(self, model: ServedModel, prompt: str, prompt_tokens: int, max_tokens: int):
        self.model, self.prompt, self.max_tokens = model, prompt, max_tokens
        self.prompt_tokens = prompt_tokens
        self.texts = []
        self.finish_reason: Optional[str] = None
        self.model_prompt_tokens: Optional[int] = None
        self.model_output_tokens: Optional[int] = None

    def add(self, piece: Piece) -> None:
        if piece.text:
            self.texts.append(piece.text)
        self.finish_reason = piece.finish_reason or self.finish_reason
        if piece.num_input_tokens is not None:
            self.model_prompt_tokens = piece.num_input_tokens
        if piece.num_output_tokens is not None:
            self.model_output_tokens = (self.model_output_tokens or 0) + piece.num_output_tokens

    @property
    def text(self) -> str:
        return "".join(self.texts)

    async def usage_and_reason(self) -> tuple:
        """(usage, finish_reason): the model's counts and reason where it returns them (vLLM's
        ``return_num_*_tokens``/``return_finish_reason`` outputs), else the bundle tokenizer's count of
        the prompt and an estimate of the answer's, and ``length`` when that reached max_tokens."""
        prompt = self.model_prompt_tokens if self.model_prompt_tokens is not None else self.prompt_tokens
        completion = self.model_output_tokens
        if completion is None:
            # An estimate: the text re-tokenized. Decoded text does not always re-encode to the tokens that
            # made it (a byte-level BPE may merge differently), and the model never makes more than max_tokens.
            completion = min(await asyncio.to_thread(self.model.tokenizer.count, self.text, False), self.max_tokens)
        reason = self.finish_reason
        if reason not in ("stop", "length"):
            reason = "length" if completion >= self.max_tokens else "stop"
        return _usage(prompt, completion), reason


def create_app(repository, grpc_url: str, *, api_key: Optional[str] = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log: Callable[[str], None] = lambda message: None) -> FastAPI:
    """The app for the models of ``repository`` served by the tritonserver at ``grpc_url``."""
    state = {}

    @asynccontextmanager
    async def lifespan(_app):
        triton = TritonGrpc(grpc_url)
        state["triton"] = triton
        state["catalog"] = Catalog(Path(repository), triton, log=log)
        try:
            await state["catalog"].refresh(force=True)
        except Exception as exc:  # noqa: BLE001 - Triton not up yet: the first request reads the index again
            log(f"portable-ep openai: could not read Triton's model index yet ({type(exc).__name__}); will retry per request")
        yield
        await triton.close()

    app = FastAPI(title="portable-ep OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        return _error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return _error_response(APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):
        log(f"portable-ep openai: request failed: {type(exc).__name__}: {exc}")
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    if api_key:
        @app.middleware("http")
        async def _authorize(request: Request, call_next):
            given = request.headers.get("authorization", "")
            if request.url.path.startswith("/v1/") and not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error_response(APIError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                                code="invalid_api_key"))
            return await call_next(request)

    def card(model: ServedModel) -> dict:
        return {"id": model.name, "object": "model", "created": model.created, "owned_by": OWNER}

    async def lookup(name: str, kind: str, route: str) -> ServedModel:
        model = await state["catalog"].lookup(name)
        if model.kind != kind:
            other = "/v1/embeddings" if model.kind == EMBEDDING else "/v1/chat/completions or /v1/completions"
            raise APIError(400, f"the model '{name}' is an {model.kind} model: use {other}, not {route}",
                           param="model", code="wrong_model_kind")
        return model

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models():
        await state["catalog"].refresh()
        return {"object": "list", "data": [card(m) for m in state["catalog"].ready()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        return card(await state["catalog"].lookup(name))

    async def generation(model: ServedModel, prompt: str, body, max_tokens: Optional[int], param: str) -> _Generation:
        check_prompt_bytes(model, prompt, param)
        prompt_tokens = await asyncio.to_thread(model.tokenizer.count, prompt)
        return _Generation(model, prompt, prompt_tokens, check_context(model, prompt_tokens, max_tokens, param))

    async def start(gen: _Generation, body, stream: bool) -> tuple:
        """The response stream and its first piece: a refusal comes before any HTTP status is sent."""
        pieces = state["triton"].generate(gen.model.name, gen.prompt, sampling_parameters(body, gen.max_tokens),
                                          stream, gen.model.return_inputs)
        try:
            first = await pieces.__anext__()
        except StopAsyncIteration:
            first = Piece("", True)
        return pieces, first

    def sse(payload) -> str:
        return f"data: {payload if isinstance(payload, str) else dump_json(payload)}\n\n"

    async def events(gen: _Generation, pieces, first: Piece, chunk: Callable[[str, Optional[str]], dict],
                     include_usage: bool, opening: Optional[dict]) -> AsyncIterator[str]:
        try:
            if opening is not None:
                yield sse(opening)
            piece = first
            while True:
                gen.add(piece)
                if piece.text:
                    yield sse(chunk(piece.text, None))
                if piece.final:
                    break
                piece = await pieces.__anext__()
            usage, reason = await gen.usage_and_reason()
            last = chunk("", reason)
            if include_usage:
                last["usage"] = None
            yield sse(last)
            if include_usage:
                tail = chunk("", None)
                tail.update(choices=[], usage=usage)
                yield sse(tail)
        except APIError as error:
            yield sse(error.body())
        except StopAsyncIteration:
            yield sse(APIError(500, f"the model '{gen.model.name}' ended its stream without a final response").body())
        finally:
            await pieces.aclose()
        yield sse("[DONE]")

    async def collect(gen: _Generation, pieces, first: Piece) -> None:
        piece = first
        try:
            while True:
                gen.add(piece)
                if piece.final:
                    return
                piece = await pieces.__anext__()
        finally:
            await pieces.aclose()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        model = await lookup(body.model, GENERATION, "/v1/chat/completions")
        refuse_unsupported(body)
        if body.max_tokens is not None and body.max_completion_tokens is not None and body.max_tokens != body.max_completion_tokens:
            raise bad_parameter("max_completion_tokens", "max_tokens and max_completion_tokens differ: give one")
        prompt = await asyncio.to_thread(chat_prompt, model, body)
        gen = await generation(model, prompt, body, body.max_completion_tokens or body.max_tokens, "messages")
        identity = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model.name,
                    "system_fingerprint": None}
        pieces, first = await start(gen, body, bool(body.stream))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            def chunk(text: str, reason: Optional[str], delta: Optional[dict] = None) -> dict:
                out = {**identity, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": delta if delta is not None else ({"content": text} if text else {}),
                                    "logprobs": None, "finish_reason": reason}]}
                if include_usage:
                    out["usage"] = None
                return out
            opening = chunk("", None, {"role": "assistant", "content": ""})
            return StreamingResponse(events(gen, pieces, first, chunk, include_usage, opening), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await collect(gen, pieces, first)
        usage, reason = await gen.usage_and_reason()
        return {**identity, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text, "refusal": None},
                             "logprobs": None, "finish_reason": reason}],
                "usage": usage}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        model = await lookup(body.model, GENERATION, "/v1/completions")
        refuse_unsupported(body)
        prompt = completion_prompt(body)
        gen = await generation(model, prompt, body, body.max_tokens, "prompt")
        identity = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model.name,
                    "system_fingerprint": None}
        pieces, first = await start(gen, body, bool(body.stream))
        echo = prompt if body.echo else ""
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            def chunk(text: str, reason: Optional[str]) -> dict:
                out = {**identity, "object": "text_completion",
                       "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}
                if include_usage:
                    out["usage"] = None
                return out
            return StreamingResponse(events(gen, pieces, first, chunk, include_usage, chunk(echo, None) if echo else None),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        await collect(gen, pieces, first)
        usage, reason = await gen.usage_and_reason()
        return {**identity, "object": "text_completion",
                "choices": [{"index": 0, "text": echo + gen.text, "logprobs": None, "finish_reason": reason}],
                "usage": usage}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        model = await lookup(body.model, EMBEDDING, "/v1/embeddings")
        texts = embedding_texts(body.input)
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise bad_parameter("input", f"input has {len(texts)} texts, over the limit of {MAX_EMBEDDING_INPUTS} per request")
        if body.dimensions is not None and body.dimensions != model.width:
            raise unsupported_parameter("dimensions", f"this model's embeddings have {model.width} dimensions and are not "
                                                      "shortened")
        encoded = await asyncio.to_thread(model.tokenizer.encode_for_encoder, texts)
        for i, (ids, _mask, _types) in enumerate(encoded):
            if model.context and len(ids) > model.context:
                raise APIError(400, f"input[{i}] is {len(ids)} tokens and this model takes at most {model.context} "
                                    "(its position table); shorten it", param="input", code="context_length_exceeded")
        limit = asyncio.Semaphore(EMBEDDING_CONCURRENCY)

        async def one(ids, mask, types) -> np.ndarray:
            columns = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            feeds = {}
            for name, triton_type in model.encoder_inputs.items():
                array = np.asarray(columns[name], dtype=np.int32 if triton_type == "TYPE_INT32" else np.int64)
                feeds[name] = array[None, :] if model.batched else array
            async with limit:
                out = await state["triton"].infer(model.name, feeds, model.embedding_output)
            out = out[0] if model.batched else out
            # last_hidden_state: the masked mean over the tokens (all real here: nothing is padded)
            return out.mean(axis=0) if model.mean_pool else out
        vectors = await asyncio.gather(*(one(*e) for e in encoded))
        data = []
        for i, vector in enumerate(vectors):
            vector = np.asarray(vector, dtype=np.float32).reshape(-1)
            value = (base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") if body.encoding_format == "base64"
                     else vector.tolist())
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(e[0]) for e in encoded)
        return {"object": "list", "data": data, "model": model.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app
