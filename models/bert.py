"""A small BERT text classifier built from a config with a fixed seed, exported to ONNX.

Needs torch and transformers (``portable-ep[bench]``); nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path


def build_bert_classifier(
    path,
    *,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    vocab: int = 8192,
    sequence: int = 128,
    labels: int = 2,
    seed: int = 0,
    opset: int = 17,
) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max(512, sequence), num_labels=labels,
    )
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(0, vocab, (2, sequence), dtype=torch.int64)
    mask = torch.ones_like(ids)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    return path
