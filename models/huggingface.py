"""Tiny Hugging Face model folders built from a config with a fixed seed (no hub, no download).

What ``portable-ep export`` takes as a source in tests and examples:
- ``build_tiny_bert_classifier``: BertForSequenceClassification (text-classification);
- ``build_tiny_cnn_classifier``: ResNetForImageClassification, a small CNN (image-classification).
Needs torch and transformers (``portable-ep[export]``).
"""
from __future__ import annotations

from pathlib import Path


def build_tiny_bert_classifier(folder, *, seed: int = 0, vocab: int = 1000, hidden: int = 64, layers: int = 2,
                               heads: int = 4, labels: int = 3) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=256, num_labels=labels,
        # Wider initial weights than BERT's 0.02 (measured: 0.02 left the logits so close that one flipped
        # sample in 32 failed int8 top-1; 0.2 gave outlier activations; 0.1 is within every budget).
        initializer_range=0.1,
    )
    model = BertForSequenceClassification(config).eval()
    folder = Path(folder)
    model.save_pretrained(str(folder))
    return folder


def build_tiny_cnn_classifier(folder, *, seed: int = 0, image_size: int = 32, labels: int = 5) -> Path:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
        num_labels=labels, image_size=image_size,
    )
    model = ResNetForImageClassification(config).eval()
    # Fresh BatchNorm statistics are 0/1; give them plausible values so the graph is not trivially linear.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    folder = Path(folder)
    model.save_pretrained(str(folder))
    return folder
