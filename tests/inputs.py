"""Seeded request inputs for the tiny test models."""
from __future__ import annotations

import numpy as np


def mlp_input(batch: int, seed: int) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 16)).astype(np.float32)}


def bow_input(batch: int, sequence: int, seed: int, vocab: int = 100) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, vocab, size=(batch, sequence), dtype=np.int64),
        "attention_mask": np.ones((batch, sequence), dtype=np.int64),
    }
