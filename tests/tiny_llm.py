"""A tiny random Llama with a real byte-level BPE tokenizer, exported with its KV cache.

Seconds to build: a tokenizer trained on a paragraph with the `tokenizers` library, a
2-layer Llama of that vocabulary, optimum's text-generation-with-past export.
"""
from __future__ import annotations

from pathlib import Path

TEXT = ("The capital of France is Paris. Once upon a time, in a small village, there lived a keeper of a lighthouse. "
        "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. naïve café — 日本語のテキスト. word word word. hello world. ") * 4
EOS = "<|endoftext|>"


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


CHAT_TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def save_hf_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer as transformers saves it (tokenizer.json + config with a chat template)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


def build_tiny_llama(folder: Path):
    """A Hugging Face folder (weights, config, tokenizer) of the tiny Llama; returns the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the initializer's make the greedy text vary
        for parameter in model.parameters():
            parameter.mul_(8.0 if parameter.dim() > 1 else 1.0)
    model.save_pretrained(folder)
    save_hf_tokenizer(tokenizer, folder)
    return model


def export_tiny_llama(folder: Path):
    """(folder holding model.onnx and tokenizer.json, the transformers model) — EOS is token 0."""
    from optimum.exporters.onnx import main_export

    folder = Path(folder)
    source = folder / "hf"
    model = build_tiny_llama(source)
    main_export(str(source), output=str(folder), task="text-generation-with-past", local_files_only=True)
    return folder, model
