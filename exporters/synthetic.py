"""Generated inputs that look like what models see in use, for calibration and golden samples.

Uniform or Gaussian noise is a poor stand-in for a photo: a detector's or a text
detector's output on noise is nearly constant, so fp16/int8 comparisons on it swing
for reasons that have nothing to do with the model, and int8 calibrated on noise
learns ranges real inputs never have. These images have what natural images have:
smooth, correlated colour fields, edges, solid shapes and lines of text (from the
built-in corpus), slightly blurred, in [0, 1]. Audio is voiced-speech-like: a few
harmonics with vibrato under a syllable-rate envelope, plus a little noise.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

CORPUS = Path(__file__).with_name("data") / "sentences.txt"
SAMPLE_RATE = 16000


def _words() -> List[str]:
    return " ".join(CORPUS.read_text().split()).split(" ")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font in Pillow >= 10.1 with FreeType
    except TypeError:
        return ImageFont.load_default()


def natural_image(rng: np.random.Generator, height: int, width: int, words: Sequence[str]) -> np.ndarray:
    """One RGB image, (height, width, 3) float32 in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFilter

    coarse = rng.uniform(0, 255, size=(int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3)).astype(np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    scale = max(min(height, width), 8)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.1, 0.6) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=colour, width=max(1, int(scale / 40)))
    # Lines of dark text on a light band: documents, signs and captions are in most image sets,
    # and OCR models see nothing else.
    for _ in range(int(rng.integers(1, 4))):
        size = int(rng.uniform(0.08, 0.25) * scale) + 6
        start = int(rng.integers(len(words)))
        text = " ".join(words[start:start + int(rng.integers(2, 6))])
        x, y = rng.uniform(0, 0.5) * width, rng.uniform(0, 0.85) * height
        font = _font(size)
        box = draw.textbbox((x, y), text, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=tuple(int(c) for c in rng.integers(200, 256, 3)))
        draw.text((x, y), text, fill=tuple(int(c) for c in rng.integers(0, 60, 3)), font=font)
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels += rng.normal(0, 0.01, size=pixels.shape).astype(np.float32)
    return np.clip(pixels, 0.0, 1.0)


def natural_images(rng: np.random.Generator, shape: Sequence[int], channels_last: bool) -> np.ndarray:
    """Images of ``shape`` (..., C, H, W) or (..., H, W, C), C of 1, 3 or 4, float32 in [0, 1]."""
    shape = tuple(int(d) for d in shape)
    if channels_last:
        height, width, channels = shape[-3:]
    else:
        channels, height, width = shape[-3:]
    count = int(np.prod(shape[:-3])) if len(shape) > 3 else 1
    words = _words()
    out = np.empty((count, height, width, channels), dtype=np.float32)
    for index in range(count):
        rgb = natural_image(rng, height, width, words)
        if channels == 1:
            out[index, ..., 0] = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        else:
            out[index, ..., :3] = rgb
            if channels == 4:
                out[index, ..., 3] = 1.0
    if not channels_last:
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out.reshape(shape))


def is_image_shape(shape: Sequence[int]) -> str:
    """'nchw', 'nhwc' or '' for a model input shape (batch included) that looks like images."""
    if len(shape) != 4:
        return ""
    spatial_ok = lambda h, w: h >= 8 and w >= 8  # noqa: E731
    if shape[1] in (1, 3, 4) and spatial_ok(shape[2], shape[3]):
        return "nchw"
    if shape[3] in (1, 3, 4) and spatial_ok(shape[1], shape[2]):
        return "nhwc"
    return ""


def waveforms(rng: np.random.Generator, shape: Sequence[int], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio along the last axis, float32 in about [-0.5, 0.5]."""
    shape = tuple(int(d) for d in shape)
    length = shape[-1] if shape else 1
    count = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    t = np.arange(length, dtype=np.float64) / sample_rate
    out = np.empty((count, length), dtype=np.float32)
    for index in range(count):
        f0 = rng.uniform(90, 260) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        voice = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 6))
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, np.pi)), 0, None) ** 2
        signal = 0.3 * voice * envelope + rng.normal(0, 0.005, length)
        out[index] = signal
    return out.reshape(shape) if shape else out.reshape(())
