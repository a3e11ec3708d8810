"""The calibration files a user would write for corpus models whose inputs are neither images nor
tokens (models/corpus.toml, ``calibration = "<recipe>"``), in the layout export reads
(exporters/samples.py: one leading sample axis for a model that does not batch).

Each recipe stands in for the user's own data with the nearest thing this machine has: real
files' bytes for a file-type classifier, speech-like audio for a voice-activity detector.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np

SAMPLES = 32
Recipe = Callable[[int], Dict[str, np.ndarray]]


def file_bytes(samples: int = SAMPLES, begin: int = 1024, end: int = 1024, padding: int = 256) -> Dict[str, np.ndarray]:
    """Magika's input: the first and last 1024 bytes of a file, padded with token 256 (int32)."""
    roots = [Path(sys.prefix), Path(sys.base_prefix) / "lib", Path("/usr/share")]
    suffixes = (".py", ".txt", ".json", ".png", ".so", ".xml", ".html", ".md", ".cfg", ".gz", ".pem", ".csv", ".svg")
    chosen = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix in suffixes and path.is_file() and path.stat().st_size > 64:
                if sum(p.suffix == path.suffix for p in chosen) < 3:
                    chosen.append(path)
            if len(chosen) >= samples:
                break
        if len(chosen) >= samples:
            break
    rows = np.full((samples, begin + end), padding, dtype=np.int32)
    for row, path in enumerate(chosen[:samples]):
        data = path.read_bytes()
        head, tail = data[:begin], data[-end:]
        rows[row, :len(head)] = np.frombuffer(head, dtype=np.uint8)
        rows[row, begin + end - len(tail):] = np.frombuffer(tail, dtype=np.uint8)
    return {"bytes": rows}


def silero_vad_16k(samples: int = SAMPLES) -> Dict[str, np.ndarray]:
    """Silero VAD v5/v6: 512-sample chunks at 16 kHz (batch 1), a zero state, the rate as a scalar."""
    from portable_ep.exporters.synthetic import waveforms

    rng = np.random.default_rng(7)
    return {"input": waveforms(rng, (samples, 1, 512)), "state": np.zeros((samples, 2, 1, 128), np.float32),
            "sr": np.full((samples,), 16000, dtype=np.int64)}


def silero_vad_frames(samples: int = SAMPLES, frames: int = 4) -> Dict[str, np.ndarray]:
    """faster-whisper's Silero VAD: frames of 576 samples (512 + 64 of context), zero h/c states."""
    from portable_ep.exporters.synthetic import waveforms

    rng = np.random.default_rng(8)
    return {"input": waveforms(rng, (samples, frames, 576)), "h": np.zeros((samples, 1, 1, 128), np.float32),
            "c": np.zeros((samples, 1, 1, 128), np.float32)}


RECIPES: Dict[str, Recipe] = {
    "file-bytes": file_bytes,
    "silero-vad-16k": silero_vad_16k,
    "silero-vad-frames": silero_vad_frames,
}


def write_calibration(recipe: str, path: Path) -> Path:
    if recipe not in RECIPES:
        raise KeyError(f"unknown calibration recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    np.savez(path, **RECIPES[recipe]())
    return path
