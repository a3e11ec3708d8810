"""Compare outputs with the golden outputs, within a precision's budget.

The one rule export (per variant) and ``portable-ep check`` (served outputs) both
use, so "within budget" means the same thing everywhere (docs/bundle.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional

import numpy as np

#: Defaults written into each manifest; a bundle may carry its own. ``max_abs`` scales with
#: the output: the limit is ``max_abs * max(1, max |reference|)``, so a detector's pixel
#: coordinates (up to ~640) get the same relative tolerance as a probability in [0, 1]
#: (docs/bundle.md). int8 has no absolute limit at all: cosine and top-1 agreement judge it.
#: ``min_cosine`` bounds the mean over samples, ``min_worst_cosine`` the worst sample.
DEFAULT_BUDGETS: Dict[str, Dict[str, Optional[float]]] = {
    "fp32": {"max_abs": 1e-4, "min_cosine": 0.99999, "min_worst_cosine": 0.9999, "min_top1": 1.0},
    "fp16": {"max_abs": 1e-2, "min_cosine": 0.999, "min_worst_cosine": 0.998, "min_top1": 0.99},
    "bf16": {"max_abs": 5e-2, "min_cosine": 0.999, "min_worst_cosine": 0.995, "min_top1": 0.98},
    "int8": {"max_abs": None, "min_cosine": 0.98, "min_worst_cosine": 0.95, "min_top1": 0.95},
}


@dataclass(frozen=True)
class OutputAccuracy:
    max_abs: float
    max_rel: float
    cosine: float  # mean over samples of the cosine similarity of each sample's flattened output
    worst_cosine: float  # the worst sample's
    top1: Optional[float]  # agreement of argmax over the last axis; logits outputs only
    scale: float = 1.0  # max(1, max |reference|): what max_abs budgets are multiplied by

    def as_dict(self) -> dict:
        return asdict(self)


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(a.shape[0], -1)


def compare_output(golden: np.ndarray, actual: np.ndarray, is_logits: bool = False) -> OutputAccuracy:
    golden = np.asarray(golden)
    actual = np.asarray(actual)
    if golden.shape != actual.shape:
        raise ValueError(f"shape {actual.shape} differs from the golden output's {golden.shape}")
    g, a = _rows(golden), _rows(actual)
    diff = np.abs(g - a)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(g).max()) if g.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(a, axis=1)
    dots = np.sum(g * a, axis=1)
    # Two all-zero rows are identical; one zero row against a non-zero one is not.
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), np.where(np.all(g == a, axis=1), 1.0, 0.0))
    cosine = float(cosines.mean()) if cosines.size else 1.0
    worst = float(cosines.min()) if cosines.size else 1.0
    top1 = None
    if is_logits and golden.ndim >= 1 and golden.shape[-1] > 1:
        top1 = float(np.mean(np.argmax(golden, axis=-1) == np.argmax(actual, axis=-1)))
    return OutputAccuracy(max_abs, max_rel, cosine, worst, top1, max(1.0, scale))


def abs_limit(budget: Mapping[str, Optional[float]], accuracy: OutputAccuracy) -> Optional[float]:
    """The max |diff| allowed for this output: the budget's ``max_abs`` times the output's scale."""
    if budget.get("max_abs") is None:
        return None
    return float(budget["max_abs"]) * max(1.0, accuracy.scale)


def budget_violations(name: str, accuracy: OutputAccuracy, budget: Mapping[str, float], precision: str) -> list:
    """One line per limit missed, saying which output, by how much, and which budget."""
    problems = []
    limit = abs_limit(budget, accuracy)
    if limit is not None and accuracy.max_abs > limit:
        scaled = f" x max(1, max |reference| = {accuracy.scale:.3g})" if accuracy.scale > 1 else ""
        problems.append(
            f"output {name!r}: max abs error {accuracy.max_abs:.3g} exceeds the {precision} budget "
            f"{budget['max_abs']:.3g}{scaled} by {accuracy.max_abs - limit:.3g}"
        )
    if accuracy.cosine < budget["min_cosine"]:
        problems.append(
            f"output {name!r}: mean cosine {accuracy.cosine:.6f} is below the {precision} budget "
            f"{budget['min_cosine']} by {budget['min_cosine'] - accuracy.cosine:.3g}"
        )
    worst_limit = budget.get("min_worst_cosine")
    if worst_limit is not None and accuracy.worst_cosine < worst_limit:
        problems.append(
            f"output {name!r}: worst-sample cosine {accuracy.worst_cosine:.6f} is below the {precision} budget "
            f"{worst_limit} by {worst_limit - accuracy.worst_cosine:.3g}"
        )
    if accuracy.top1 is not None and accuracy.top1 < budget["min_top1"]:
        problems.append(
            f"output {name!r}: top-1 agreement {accuracy.top1:.3f} is below the {precision} budget {budget['min_top1']}"
        )
    return problems


def compare_outputs(
    golden: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    budget: Mapping[str, float],
    precision: str,
    logits_outputs=(),
):
    """``({name: OutputAccuracy}, [violation lines])`` for every golden output."""
    results, problems = {}, []
    for name, expected in golden.items():
        if name not in actual:
            problems.append(f"output {name!r} is missing from the outputs compared")
            continue
        try:
            acc = compare_output(expected, actual[name], is_logits=name in logits_outputs)
        except ValueError as exc:
            problems.append(f"output {name!r}: {exc}")
            continue
        results[name] = acc
        problems.extend(budget_violations(name, acc, budget, precision))
    return results, problems
