"""The generative bundle's tokenizer files say what the tokenizer is (exporters/llm_tokenizer_files.py)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="tokenizer files are written by transformers (export extra)")

from portable_ep.exporters.llm_tokenizer_files import (check_saved_tokenizer, correct_gguf_tokenizer,  # noqa: E402
                                                       end_of_turn_id, fix_tokenizer_class)

TURN_TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")


def _tokenizer(template=None, extra_special=()):
    from tiny_llm import hf_tokenizer

    tokenizer = hf_tokenizer(add_bos=True)
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    if template:
        tokenizer.chat_template = template
    return tokenizer


def test_the_end_of_turn_token_is_the_special_token_after_an_answer():
    tokenizer = _tokenizer(TURN_TEMPLATE, ["<|im_end|>"])
    assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(_tokenizer()) is None  # the tiny template ends a turn with "\n": no such token
    no_template = _tokenizer()
    no_template.chat_template = None
    assert end_of_turn_id(no_template) is None


def test_a_byte_level_tokenizer_labelled_llama_is_relabelled_and_loads_the_same(tmp_path):
    tokenizer = _tokenizer(TURN_TEMPLATE, ["<|im_end|>"])
    tokenizer.save_pretrained(tmp_path, save_jinja_files=False)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="LlamaTokenizer", legacy=True)  # what transformers' GGUF loader writes
    config_path.write_text(json.dumps(config))
    assert fix_tokenizer_class(tmp_path) == "LlamaTokenizer"
    assert json.loads(config_path.read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert fix_tokenizer_class(tmp_path) is None  # already right: left alone
    check_saved_tokenizer(tmp_path, tokenizer, ["<|endoftext|>user\nhi<|im_end|>\n", "plain text"])


def test_the_smollm2_gguf_gets_its_own_bos_eos_and_bos_rule():
    pytest.importorskip("gguf", reason="reading a GGUF needs the smollm2 extra")
    from portable_ep.exporters.errors import ExportError
    from portable_ep.models.smollm2 import smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except ExportError as exc:
        pytest.skip(str(exc))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert tokenizer.eos_token == "<|im_start|>"  # transformers' reading, which the bundle used to carry
    metadata = correct_gguf_tokenizer(tokenizer, gguf)
    assert metadata == {"bos_token_id": 1, "eos_token_id": 2, "add_bos_token": False}
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert tokenizer(rendered)["input_ids"][:2] != [1, 1]  # no BOS added in front of the template's own
    assert end_of_turn_id(tokenizer) == 2  # <|im_end|> ends a turn
