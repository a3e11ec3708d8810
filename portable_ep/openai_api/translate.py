"""OpenAI request fields → the prompt text and vLLM ``sampling_parameters`` the Triton model takes.

Every field either reaches the model under vLLM's name, is handled here (``n``=1, ``echo``,
``stream_options``), or is refused by name with the reason (docs/generation.md lists them).
"""
from __future__ import annotations

import json
from typing import List, Optional, Union

from portable_ep.openai_api.catalog import ServedModel
from portable_ep.openai_api.errors import APIError, bad_parameter, unsupported_parameter
from portable_ep.openai_api.schemas import ChatCompletionRequest, CompletionRequest, ResponseFormat

# Passed through under the same name (OpenAI's and vLLM's names agree).
_SAME_NAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p",
              "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids")


def refuse_unsupported(body: Union[ChatCompletionRequest, CompletionRequest]) -> None:
    """APIError 400 naming the first field this server cannot honour."""
    if body.n not in (None, 1):
        raise unsupported_parameter("n", "one choice per request (send n requests for n answers)")
    if body.logit_bias:
        raise unsupported_parameter("logit_bias", "the model's engines do not bias logits per request")
    if isinstance(body, ChatCompletionRequest):
        if body.logprobs:
            raise unsupported_parameter("logprobs", "this model does not return log probabilities")
        if body.top_logprobs:
            raise unsupported_parameter("top_logprobs", "this model does not return log probabilities")
        for name in ("tools", "functions"):
            if getattr(body, name):
                raise unsupported_parameter(name, "tool calling is not implemented; use response_format json_schema "
                                                  "for structured answers")
        for name in ("tool_choice", "function_call"):
            if getattr(body, name) not in (None, "none"):
                raise unsupported_parameter(name, "tool calling is not implemented")
    else:
        if body.logprobs:
            raise unsupported_parameter("logprobs", "this model does not return log probabilities")
        if body.best_of not in (None, 1):
            raise unsupported_parameter("best_of", "one sequence per request")
        if body.suffix:
            raise unsupported_parameter("suffix", "the models here do not fill in the middle")


def structured_output(response_format: Optional[ResponseFormat]) -> dict:
    """``response_format`` as vLLM's guided-decoding sampling parameters."""
    if response_format is None or response_format.type == "text":
        return {}
    if response_format.type == "json_object":
        return {"guided_json_object": True}
    schema = response_format.json_schema.json_schema if response_format.json_schema else None
    if not isinstance(schema, dict):
        raise bad_parameter("response_format", "response_format json_schema needs json_schema.schema, a JSON schema object")
    return {"guided_json": schema}


def sampling_parameters(body: Union[ChatCompletionRequest, CompletionRequest], max_tokens: int) -> dict:
    """vLLM's ``sampling_parameters`` for the request; ``max_tokens`` is already decided."""
    sampling = {"max_tokens": max_tokens}
    for name in _SAME_NAME:
        value = getattr(body, name)
        if value is not None:
            sampling[name] = value
    if body.stop:
        sampling["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
    sampling.update(structured_output(body.response_format))
    return sampling


def _message_text(index: int, content) -> Optional[str]:
    """A message's content as text: OpenAI's list of parts may hold text parts only here."""
    if content is None or isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise unsupported_parameter(f"messages[{index}].content", f"content part of type {part.get('type')!r}: "
                                                                      "the models here take text only")
        texts.append(part["text"])
    return "".join(texts)


def chat_prompt(model: ServedModel, body: ChatCompletionRequest) -> str:
    """The messages rendered with the bundle's own chat template (with the generation prompt)."""
    if model.chat_template is None:
        raise APIError(400, f"the model '{model.name}' has no chat template (a base model): use /v1/completions "
                            "with the prompt text", param="messages", code="no_chat_template")
    messages = []
    for i, message in enumerate(body.messages):
        entry = message.model_dump(exclude_none=True)
        entry["content"] = _message_text(i, message.content) or ""
        messages.append(entry)
    from jinja2.exceptions import TemplateError

    try:
        return model.chat_template.render(messages, add_generation_prompt=True, **(body.chat_template_kwargs or {}))
    except TemplateError as exc:
        raise bad_parameter("messages", f"the model's chat template refused the messages: {exc}") from None


def completion_prompt(body: CompletionRequest) -> str:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise unsupported_parameter("prompt", "one text prompt per request (a list of one string works; token ids "
                                                  "and batches of prompts do not)")
        prompt = prompt[0]
    if not prompt:
        raise bad_parameter("prompt", "prompt is empty: the model needs at least one token")
    return prompt


def check_context(model: ServedModel, prompt_tokens: int, max_tokens: Optional[int], param: str) -> int:
    """The max_tokens to ask for: the request's, or what the context leaves; APIError 400 with the figures
    when the prompt does not fit (OpenAI's ``context_length_exceeded``)."""
    room = model.context - prompt_tokens
    if room < 1:
        raise APIError(400, f"This model's maximum context length is {model.context} tokens. However, your "
                            f"{param} resulted in {prompt_tokens} tokens. Please reduce the length of the {param}.",
                       param=param, code="context_length_exceeded")
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise APIError(400, f"This model's maximum context length is {model.context} tokens. However, you requested "
                            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, {max_tokens} in the "
                            "completion). Please reduce the length of the messages or completion.",
                       param="max_tokens", code="context_length_exceeded")
    return max_tokens


def check_prompt_bytes(model: ServedModel, prompt: str, param: str) -> None:
    """Before tokenizing: the model's byte limit on a prompt (generation.max_prompt_bytes), with the figures."""
    size = len(prompt.encode("utf-8"))
    if model.prompt_bytes and size > model.prompt_bytes:
        raise APIError(400, f"the {param} is {size} bytes as the model sees it, over this model's limit of "
                            f"{model.prompt_bytes} bytes ({model.context}-token context; parameter "
                            "generation.max_prompt_bytes)", param=param, code="context_length_exceeded")


def embedding_texts(value) -> List[str]:
    """The input of /v1/embeddings as a list of texts (token-id input is refused by name)."""
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise bad_parameter("input", "input is empty: give a string or a list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise unsupported_parameter("input", "token ids as input: send the text (the server tokenizes it with the "
                                                 "model's own tokenizer)")
        if not text:
            raise bad_parameter("input", f"input[{i}] is an empty string")
    return texts


def dump_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
