"""Read portable-ep's own series out of Triton's Prometheus /metrics text."""
from __future__ import annotations

import re
from typing import Dict, List

_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_series(text: str, name: str) -> List[Dict[str, str]]:
    """Every sample of metric ``name``: its labels plus ``value``."""
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match.group("name") == name:
            sample = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(match.group("labels") or "")}
            sample["value"] = match.group("value")
            samples.append(sample)
    return samples


def served_providers(text: str) -> Dict[str, Dict[str, str]]:
    """model name → labels of its portable_ep_model_info sample (provider, precision, description)."""
    return {s["model"]: s for s in parse_series(text, "portable_ep_model_info")}
