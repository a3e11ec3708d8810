"""Compare outputs with the golden outputs, within a precision's budget.

The one rule export (per variant), the server's load-time route check and
``portable-ep check`` (served outputs) all use, so "within budget" means the same thing
everywhere (docs/bundle.md "Budgets").

Two refinements make the verdicts hold where a plain per-sample cosine does not:

- **Cosine only where it means something.** The cosine of a one-element sample is only
  the sign of two numbers, and the cosine of a sample whose values are all at rounding
  level (0.0 in one runtime, 1e-32 in the other) is the direction of rounding noise. Such
  samples are not scored by cosine; their absolute error is held to an absolute floor
  instead (the budget's ``max_abs``, or ``unscored_max_abs`` for int8, which has none),
  scaled like ``max_abs``.
- **Sorted sets compared as sets.** Outputs produced by TopK or NonMaxSuppression (or
  declared so) list rows ranked by a score; two near-tied scores may come out in either
  order in two runtimes, so each sample's rows are matched (minimum total squared
  difference) before comparing element by element.
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
    "int8": {"max_abs": None, "min_cosine": 0.98, "min_worst_cosine": 0.95, "min_top1": 0.95,
             "unscored_max_abs": 5e-2},
}

#: A sample's cosine is scored only when it has at least two elements and the larger of its
#: reference's and actual's RMS exceeds this: float32 resolves about 1e-7 relative, so a
#: sample whose values all sit near 1e-6 or below is rounding noise in any direction.
COSINE_RMS_FLOOR = 1e-6
#: The absolute limit (times max(1, max |reference|)) for samples cosine does not score,
#: in a budget that has no ``max_abs`` and no ``unscored_max_abs`` of its own.
UNSCORED_MAX_ABS = 5e-2
#: The ``output_kinds`` value (manifest ``signature``) of an output whose rows form a ranked set.
SORTED_ROWS = "sorted_rows"
#: Rows per sample up to which sorted-set rows are paired optimally (a rows x rows cost matrix:
#: 1,024 rows is 8 MB); more rows are compared in lexicographic order.
MATCH_ROWS_LIMIT = 1024


@dataclass(frozen=True)
class OutputAccuracy:
    max_abs: float
    max_rel: float
    cosine: float  # mean over samples of the cosine similarity of each sample's flattened output
    worst_cosine: float  # the worst sample's
    top1: Optional[float]  # agreement of argmax over the last axis; logits outputs only
    scale: float = 1.0  # max(1, max |reference|): what max_abs budgets are multiplied by
    # Samples cosine does not score (one element, or all values at rounding level) and their
    # worst max |diff|, which the absolute floor judges instead; None when every sample is scored.
    unscored_samples: int = 0
    unscored_max_abs: Optional[float] = None
    rows_matched: bool = False  # a sorted-set output whose rows were matched before comparing

    def as_dict(self) -> dict:
        return asdict(self)


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(a.shape[0], -1)


def match_rows(golden: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """``actual`` with each sample's rows (axis 1) reordered to best match ``golden``'s.

    Axis 0 is the sample axis (exporters/samples.py); the rows of a sample are its entries
    along axis 1, each flattened. The pairing minimises the total squared difference
    (the Hungarian method), so rows already in the same order stay where they are and
    rows that swapped places because their scores were near-tied are paired again.
    """
    from scipy.optimize import linear_sum_assignment

    golden = np.asarray(golden)
    actual = np.asarray(actual)
    if golden.ndim < 2 or golden.shape != actual.shape or golden.shape[1] < 2:
        return actual
    out = actual.copy()
    for index in range(golden.shape[0]):
        g = golden[index].reshape(golden.shape[1], -1).astype(np.float64)
        a = actual[index].reshape(actual.shape[1], -1).astype(np.float64)
        if len(g) > MATCH_ROWS_LIMIT:
            # The pairing's cost matrix grows with rows squared: past the limit both sides are put in
            # lexicographic row order instead (exact for equal sets, approximate for near ties).
            order_g, order_a = np.lexsort(g.T[::-1]), np.lexsort(a.T[::-1])
            rows, cols = order_g, order_a
        else:
            cost = ((g[:, None, :] - a[None, :, :]) ** 2).sum(axis=2)
            rows, cols = linear_sum_assignment(cost)
        out[index][rows] = actual[index][cols]
    return out


def _scored(g: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per sample: whether its cosine means something (see COSINE_RMS_FLOOR)."""
    if g.shape[1] < 2:
        return np.zeros(g.shape[0], dtype=bool)
    rms = np.sqrt(np.maximum(np.mean(g * g, axis=1), np.mean(a * a, axis=1)))
    return rms > COSINE_RMS_FLOOR


def compare_output(golden: np.ndarray, actual: np.ndarray, is_logits: bool = False,
                   sorted_rows: bool = False) -> OutputAccuracy:
    golden = np.asarray(golden)
    actual = np.asarray(actual)
    if golden.shape != actual.shape:
        raise ValueError(f"shape {actual.shape} differs from the golden output's {golden.shape}")
    if sorted_rows:
        actual = match_rows(golden, actual)
    g, a = _rows(golden), _rows(actual)
    diff = np.abs(g - a)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(g).max()) if g.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    scored = _scored(g, a)
    gs, as_ = g[scored], a[scored]
    norms = np.linalg.norm(gs, axis=1) * np.linalg.norm(as_, axis=1)
    dots = np.sum(gs * as_, axis=1)
    # A scored sample has a norm above the floor on one side at least; a zero on the other side is a miss.
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 0.0)
    cosine = float(cosines.mean()) if cosines.size else 1.0
    worst = float(cosines.min()) if cosines.size else 1.0
    unscored = int((~scored).sum()) if g.size else 0
    unscored_max = float(diff[~scored].max()) if unscored and diff.shape[1] else None
    top1 = None
    if is_logits and golden.ndim >= 1 and golden.shape[-1] > 1:
        top1 = float(np.mean(np.argmax(golden, axis=-1) == np.argmax(actual, axis=-1)))
    return OutputAccuracy(max_abs, max_rel, cosine, worst, top1, max(1.0, scale), unscored, unscored_max,
                          bool(sorted_rows))


def abs_limit(budget: Mapping[str, Optional[float]], accuracy: OutputAccuracy) -> Optional[float]:
    """The max |diff| allowed for this output: the budget's ``max_abs`` times the output's scale."""
    if budget.get("max_abs") is None:
        return None
    return float(budget["max_abs"]) * max(1.0, accuracy.scale)


def unscored_limit(budget: Mapping[str, Optional[float]], accuracy: OutputAccuracy) -> float:
    """The max |diff| allowed on samples cosine does not score: ``max_abs``, else ``unscored_max_abs``, scaled."""
    base = budget.get("max_abs")
    if base is None:
        base = budget.get("unscored_max_abs")
    if base is None:
        base = UNSCORED_MAX_ABS
    return float(base) * max(1.0, accuracy.scale)


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
    floor = unscored_limit(budget, accuracy)
    if accuracy.unscored_max_abs is not None and accuracy.unscored_max_abs > floor and (limit is None or floor < limit):
        problems.append(
            f"output {name!r}: max abs error {accuracy.unscored_max_abs:.3g} on {accuracy.unscored_samples} sample(s) "
            f"too small for a cosine (one element, or all values near zero) exceeds the {precision} absolute floor {floor:.3g}"
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
    sorted_outputs=(),
):
    """``({name: OutputAccuracy}, [violation lines])`` for every golden output; ``sorted_outputs``
    are compared as sets of rows (see match_rows)."""
    results, problems = {}, []
    for name, expected in golden.items():
        if name not in actual:
            problems.append(f"output {name!r} is missing from the outputs compared")
            continue
        try:
            acc = compare_output(expected, actual[name], is_logits=name in logits_outputs,
                                 sorted_rows=name in sorted_outputs)
        except ValueError as exc:
            problems.append(f"output {name!r}: {exc}")
            continue
        results[name] = acc
        problems.extend(budget_violations(name, acc, budget, precision))
    return results, problems


def outputs_of_kind(signature: Mapping, kind: str) -> list:
    """The outputs a manifest ``signature`` marks as ``kind`` in ``output_kinds`` (``logits``, SORTED_ROWS)."""
    return [name for name, value in (signature.get("output_kinds") or {}).items() if value == kind]
