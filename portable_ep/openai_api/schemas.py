"""The request bodies the API accepts (pydantic), with OpenAI's names, types and ranges.

An argument OpenAI does not define is refused by name, as OpenAI refuses one ("unrecognized
request argument"), except vLLM's sampling extensions that its OpenAI server also takes
(``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``ignore_eos``,
``stop_token_ids``). Arguments OpenAI defines that this server cannot honour (``n`` > 1,
``logprobs``, ``tools``, ``logit_bias``, ...) are accepted by the schema and refused by name
in :mod:`portable_ep.openai_api.translate`, so the message says why rather than "unknown".
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: Optional[str] = None
    description: Optional[str] = None
    # "schema" shadows a BaseModel attribute in pydantic: stored under another name
    json_schema: Optional[Dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchema] = None


class Message(BaseModel):
    # Messages keep what the client sent (tool calls, names): the chat template decides what to use.
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, List[Dict[str, Any]], None] = None


class _Sampling(_Strict):
    model: str
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    seed: Optional[int] = None
    stop: Union[str, List[str], None] = None
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    n: Optional[int] = Field(default=None, ge=1)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    logit_bias: Optional[Dict[str, float]] = None
    user: Optional[str] = None
    # vLLM's extensions
    top_k: Optional[int] = None
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    repetition_penalty: Optional[float] = Field(default=None, gt=0)
    min_tokens: Optional[int] = Field(default=None, ge=0)
    ignore_eos: Optional[bool] = None
    stop_token_ids: Optional[List[int]] = None


class ChatCompletionRequest(_Sampling):
    messages: List[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    response_format: Optional[ResponseFormat] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Any] = None
    parallel_tool_calls: Optional[bool] = None
    functions: Optional[List[Dict[str, Any]]] = None
    function_call: Optional[Any] = None
    # accepted and without effect here, as on OpenAI when nothing stores or routes the request
    metadata: Optional[Dict[str, str]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None
    # passed to the chat template, as vLLM does (e.g. enable_thinking)
    chat_template_kwargs: Optional[Dict[str, Any]] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    max_tokens: Optional[int] = Field(default=16, ge=1)
    echo: Optional[bool] = False
    suffix: Optional[str] = None
    logprobs: Optional[int] = Field(default=None, ge=0, le=5)
    best_of: Optional[int] = Field(default=None, ge=1)
    response_format: Optional[ResponseFormat] = None


class EmbeddingRequest(_Strict):
    model: str
    input: Union[str, List[str], List[int], List[List[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(default=None, ge=1)
    user: Optional[str] = None
