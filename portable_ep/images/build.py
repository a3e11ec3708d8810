"""Build one target's image with the Docker SDK, printing readable progress as it streams."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

from portable_ep.images.targets import Target


class BuildFailed(RuntimeError):
    pass


@dataclass
class BuiltImage:
    tag: str
    image_id: str
    size_bytes: int
    seconds: float


def follow_build(stream: Iterable[dict], log: Callable[[str], None], verbose: bool = False) -> str:
    """Print "Step i/n" lines (and everything with ``verbose``); the image id, or BuildFailed with the tail."""
    tail: deque = deque(maxlen=25)
    image_id = ""
    steps = cached = 0
    started = time.monotonic()
    for chunk in stream:
        if "error" in chunk:
            detail = "\n".join(tail)
            raise BuildFailed(f"{chunk['error'].strip()}\n--- last build output ---\n{detail}")
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
        text = chunk.get("stream", "")
        for line in text.splitlines():
            if not line.strip():
                continue
            tail.append(line)
            if line.startswith("Step "):
                steps += 1
                log(f"  [{time.monotonic() - started:6.1f}s] {line[:150]}")
            elif line.strip() == "---> Using cache":
                cached += 1
            elif verbose:
                log(f"      {line}")
    if not image_id:
        raise BuildFailed("the engine finished the build without an image id:\n" + "\n".join(tail))
    if cached:
        log(f"  {cached} of {steps} steps from the build cache")
    return image_id


def build_image(client, target: Target, context: Path, tag: str, build_args: Optional[Dict[str, str]] = None,
                log: Callable[[str], None] = print, verbose: bool = False) -> BuiltImage:
    started = time.monotonic()
    args = {"BASE_IMAGE": target.base_image, **(build_args or {})}
    log(f"build {target.name}: {target.dockerfile.name} -> {tag} (BASE_IMAGE={args['BASE_IMAGE']}, context {context})")
    stream = client.api.build(
        path=str(context), dockerfile=str(target.dockerfile.resolve()), tag=tag, buildargs=args,
        network_mode="host", rm=True, forcerm=True, pull=False, decode=True,
    )
    image_id = follow_build(stream, log, verbose)
    image = client.images.get(tag)
    built = BuiltImage(tag, image_id, int(image.attrs.get("Size", 0)), time.monotonic() - started)
    log(f"build {target.name}: {tag} {built.size_bytes / 1e6:.0f} MB in {built.seconds:.0f} s")
    return built
