"""The OpenAI API's pure logic: chat templates as transformers renders them, request translation,
refusals by name, error bodies and status codes."""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

pytest.importorskip("fastapi", reason="the OpenAI API is in the server extra")

from portable_ep.openai_api.catalog import GENERATION, ServedModel  # noqa: E402
from portable_ep.openai_api.errors import APIError, from_grpc  # noqa: E402
from portable_ep.openai_api.schemas import ChatCompletionRequest, CompletionRequest  # noqa: E402
from portable_ep.openai_api.text import ChatTemplate  # noqa: E402
from portable_ep.openai_api.translate import (check_context, chat_prompt, embedding_texts, refuse_unsupported,  # noqa: E402
                                              sampling_parameters)
from portable_ep.openai_api.triton_grpc import refusal_before_the_model  # noqa: E402

# A template in the style of the ones models ship (SmolLM2/Qwen's ChatML, with a default system turn and
# tojson of a non-ASCII string): whitespace control, loop variables, raise_exception.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
          "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + message['role']) }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _tokenizer_folder(tmp_path: Path, template: str) -> Path:
    from transformers import PreTrainedTokenizerFast

    import tiny_llm

    fast = PreTrainedTokenizerFast(tokenizer_object=tiny_llm.build_tokenizer(), eos_token=tiny_llm.EOS, bos_token=tiny_llm.EOS)
    fast.chat_template = template
    fast.save_pretrained(tmp_path, save_jinja_files=False)
    return fast


@pytest.mark.parametrize("template", [CHATML, None], ids=["chatml", "tiny_llm"])
def test_chat_template_renders_as_transformers_does(tmp_path, template):
    pytest.importorskip("transformers")
    import tiny_llm

    template = template or tiny_llm.CHAT_TEMPLATE
    fast = _tokenizer_folder(tmp_path, template)
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "naïve café — 日本語"},
         {"role": "assistant", "content": "Oui."}, {"role": "user", "content": "  spaces \n and lines "}],
    ]
    ours = ChatTemplate.from_folder(tmp_path)
    for messages in conversations:
        expected = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ours.render(messages) == expected


def _model(tmp_path, template=CHATML, context=64) -> ServedModel:
    pytest.importorskip("transformers")
    _tokenizer_folder(tmp_path, template)
    from portable_ep.openai_api.text import TextTokenizer

    return ServedModel("m", GENERATION, tmp_path, TextTokenizer(tmp_path), 0, context=context,
                       chat_template=ChatTemplate.from_folder(tmp_path))


def test_chat_prompt_takes_text_parts_and_refuses_images_and_bad_roles_by_name(tmp_path):
    model = _model(tmp_path)
    parts = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                     {"type": "text", "text": "b"}]}])
    assert "<|im_start|>user\nab<|im_end|>" in chat_prompt(model, parts)
    image = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(APIError) as info:
        chat_prompt(model, image)
    assert info.value.status == 400 and info.value.param == "messages[0].content"
    with pytest.raises(APIError) as info:
        chat_prompt(model, ChatCompletionRequest(model="m", messages=[{"role": "robot", "content": "x"}]))
    assert info.value.param == "messages" and "bad role robot" in info.value.message


def test_sampling_parameters_use_vllm_names_and_structured_output():
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], temperature=0.5, top_p=0.9,
                                 seed=3, stop="END", presence_penalty=1, frequency_penalty=-1, top_k=5,
                                 response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert sampling_parameters(body, 10) == {"max_tokens": 10, "temperature": 0.5, "top_p": 0.9, "seed": 3,
                                             "presence_penalty": 1, "frequency_penalty": -1, "top_k": 5, "stop": ["END"],
                                             "guided_json": {"type": "object"}}
    body = CompletionRequest(model="m", prompt="x", response_format={"type": "json_object"})
    assert sampling_parameters(body, 16) == {"max_tokens": 16, "guided_json_object": True}


@pytest.mark.parametrize("fields,param", [({"n": 3}, "n"), ({"logprobs": True}, "logprobs"),
                                          ({"top_logprobs": 2}, "top_logprobs"), ({"logit_bias": {"1": 5}}, "logit_bias"),
                                          ({"tools": [{"type": "function"}]}, "tools"), ({"tool_choice": "auto"}, "tool_choice")])
def test_what_the_server_cannot_honour_is_refused_by_name(fields, param):
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], **fields)
    with pytest.raises(APIError) as info:
        refuse_unsupported(body)
    assert info.value.status == 400 and info.value.param == param and info.value.code == "unsupported_parameter"


def test_context_check_gives_the_figures(tmp_path):
    model = ServedModel("m", GENERATION, tmp_path, None, 0, context=64)
    assert check_context(model, 10, None, "messages") == 54  # no max_tokens: what the context leaves
    assert check_context(model, 10, 54, "messages") == 54
    with pytest.raises(APIError) as info:
        check_context(model, 64, None, "prompt")
    assert "maximum context length is 64 tokens" in info.value.message and "resulted in 64 tokens" in info.value.message
    with pytest.raises(APIError) as info:
        check_context(model, 10, 55, "messages")
    assert info.value.param == "max_tokens" and "requested 65 tokens (10 in the messages, 55 in the completion)" in info.value.message


def test_embedding_input_is_text():
    assert embedding_texts("a") == ["a"] and embedding_texts(["a", "b"]) == ["a", "b"]
    for bad, param in (([1, 2, 3], "input"), ([], "input"), (["a", ""], "input")):
        with pytest.raises(APIError) as info:
            embedding_texts(bad)
        assert info.value.param == param and info.value.status == 400


@pytest.mark.parametrize("code,status", [(grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.NOT_FOUND, 404),
                                         (grpc.StatusCode.UNAVAILABLE, 503), (grpc.StatusCode.INTERNAL, 500),
                                         (grpc.StatusCode.CANCELLED, 500)])
def test_grpc_codes_map_to_openai_statuses_and_bodies(code, status):
    error = from_grpc(code, "why", "m")
    assert error.status == status and "why" in error.message
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == {400: "invalid_request_error", 404: "not_found_error", 503: "service_unavailable"}.get(status, "server_error")


def test_bare_stream_errors_are_triton_refusing_the_request():
    assert refusal_before_the_model("Request for unknown model: 'x' is not found", "x").status == 404
    assert refusal_before_the_model("expected number of inputs between 1 and 4 but got 5", "x").status == 400
    assert refusal_before_the_model("model 'x' is not ready", "x").status == 503


def test_unknown_arguments_and_bad_values_are_400_naming_the_parameter(tmp_path):
    from fastapi.testclient import TestClient

    from portable_ep.openai_api.app import create_app

    # no Triton behind it: these are refused by the schema before any model is looked up
    with TestClient(create_app(tmp_path, "127.0.0.1:1", max_body_bytes=1024)) as client:
        answer = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                             "temperatur": 1})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "temperatur"
        assert "Unrecognized request argument" in answer.json()["error"]["message"]
        answer = client.post("/v1/completions", json={"model": "m", "prompt": "x", "top_p": 0})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "top_p"
        answer = client.post("/v1/completions", json={"prompt": "x"})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "missing_required_parameter"
        answer = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and "Traceback" not in answer.text
        answer = client.post("/v1/completions", json={"model": "m", "prompt": "x" * 2000})
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
        assert client.get("/v1/nothing").json()["error"]["message"] == "Not Found"


def test_api_key_is_required_when_set(tmp_path):
    from fastapi.testclient import TestClient

    from portable_ep.openai_api.app import create_app

    with TestClient(create_app(tmp_path, "127.0.0.1:1", api_key="s3cret")) as client:
        assert client.post("/v1/completions", json={}).status_code == 401
        assert client.post("/v1/completions", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/completions", json={}, headers={"Authorization": "Bearer s3cret"}).status_code == 400
        assert client.get("/health").status_code == 200


def test_serve_starts_the_api_only_for_a_generative_or_embedding_model(tmp_path):
    from portable_ep.openai_api.catalog import latest_version_dir, repository_has_api_models

    def model(name, manifest, versions=("1",)):
        for version in versions:
            (tmp_path / name / version).mkdir(parents=True)
            (tmp_path / name / version / "manifest.json").write_text(json.dumps(manifest))
    model("classifier", {"task": "text-classification", "tokenizer": "tokenizer",
                         "signature": {"outputs": [{"name": "logits"}]}})
    model("plain_onnx", {}, versions=())
    (tmp_path / "plain_onnx" / "1").mkdir(parents=True)
    assert not repository_has_api_models(tmp_path)
    model("encoder_without_tokenizer", {"signature": {"outputs": [{"name": "sentence_embedding"}]}})
    assert not repository_has_api_models(tmp_path)
    model("encoder", {"tokenizer": "tokenizer", "signature": {"outputs": [{"name": "sentence_embedding"}]}}, ("1", "10", "2"))
    assert repository_has_api_models(tmp_path)
    assert latest_version_dir(tmp_path / "encoder").name == "10"  # Triton's latest: by number, not by name


def test_prompt_counts_a_bos_the_text_already_has_once(tmp_path):
    """llama.cpp's rule, as the server applies it: a rendered template that begins with BOS gets no second one."""
    from tokenizers.processors import TemplateProcessing

    import tiny_llm
    from portable_ep.openai_api.text import TextTokenizer

    tokenizer = tiny_llm.build_tokenizer()
    bos = tokenizer.token_to_id(tiny_llm.EOS)
    tokenizer.post_processor = TemplateProcessing(single=f"{tiny_llm.EOS} $A", special_tokens=[(tiny_llm.EOS, bos)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    counter = TextTokenizer(tmp_path)
    plain = len(tokenizer.encode("hello world", add_special_tokens=False).ids)
    assert counter.count("hello world") == plain + 1
    assert counter.count(tiny_llm.EOS + "hello world") == plain + 1
    assert counter.count("hello world", add_special_tokens=False) == plain
