"""Accuracy: the bundle's golden inputs, served, against its golden outputs, within the budget
of the precision being served; plus a seeded random sample, served, against the same provider
and precision run in-process (it proves batching and transport change nothing)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from portable_ep.backends.bundle_paths import confined_path
from portable_ep.check.target import Target
from portable_ep.exporters.accuracy import DEFAULT_BUDGETS, SORTED_ROWS, compare_outputs, outputs_of_kind
from portable_ep.exporters.samples import run_samples

RANDOM_SEED = 12345
RANDOM_SAMPLES = 8


def _load(path) -> Dict[str, np.ndarray]:
    from portable_ep.backends.dtypes import restore_bfloat16

    with np.load(path) as data:
        return {name: restore_bfloat16(data[name]) for name in data.files}


def _chunk(target: Target) -> int:
    """Samples per request: the served batch limit; all of them for a batched bundle served without batching."""
    return target.max_batch_size or 1 << 30


def serve(target: Target, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Every sample of ``feeds`` (the bundle's samples layout, exporters/samples.py) served, outputs joined."""
    from portable_ep.client import infer_once, make_client

    # A scalar output of a model that does not batch comes back as [1] (Triton has no rank 0 there).
    scalars = set() if target.manifest is None or target.batched else {s.name for s in target.signature.outputs if not s.shape}

    def one_call(call):
        outputs = infer_once(target.protocol, target.url, target.model, call, client)
        return {name: (value.reshape(()) if name in scalars else value) for name, value in outputs.items()}

    client = make_client(target.protocol, target.url)
    try:
        return run_samples(one_call, feeds, target.batched, _chunk(target))
    finally:
        client.close()


def _run_local(session, feeds, target: Target) -> Dict[str, np.ndarray]:
    return run_samples(session.run, feeds, target.batched, _chunk(target))


def _random_inputs(target: Target) -> Optional[Dict[str, np.ndarray]]:
    """A seeded sample made the way export made its golden inputs (shaped and ranged like the user's
    calibration or golden file when export had one); None where it cannot be generated."""
    from portable_ep.exporters.errors import ExportError
    from portable_ep.exporters.inputs import generate_inputs, vocab_sizes_from_onnx

    manifest = target.manifest
    onnx_path = confined_path(target.bundle, "model.onnx", "model file")
    vocab = vocab_sizes_from_onnx(onnx_path, target.signature) if onnx_path.is_file() else {}
    if "input_ids" not in vocab and manifest.get("vocab_sizes"):
        vocab.update(manifest["vocab_sizes"])
    sequence = (manifest.get("reference") or {}).get("sequence_length", 16)
    generation = manifest.get("generation") or {}
    try:
        # profiles: the shapes and ranges of the user's calibration/golden file, when export had one.
        return generate_inputs(target.signature, RANDOM_SAMPLES, seed=RANDOM_SEED, sequence_length=sequence, vocab_sizes=vocab,
                               dim_sizes=generation.get("dim_sizes"), shapes=generation.get("input_shapes"),
                               hints=generation.get("hints"), profiles=generation.get("profiles"))
    except ExportError:
        return None


def _entry(results, problems) -> dict:
    return {"outputs": {name: acc.as_dict() for name, acc in results.items()}, "problems": problems, "passed": not problems}


def _compare_served(target: Target, feeds, expected, budget, logits, sorted_outputs=()):
    """Serve ``feeds`` and compare with ``expected``; a request the server refuses is a problem, not a crash."""
    from portable_ep.exporters.errors import one_line

    try:
        served = serve(target, feeds)
    except Exception as exc:
        return {}, [f"the server refused the inputs: {one_line(exc)}"]
    return compare_outputs(expected, served, budget, target.precision, logits, sorted_outputs)


def check_accuracy(target: Target, session=None, session_reason: str = "") -> dict:
    if target.manifest is None:
        return {"checked": False, "reason": "no --bundle given: nothing to compare with", "passed": True, "problems": []}
    budgets = target.manifest.get("budgets") or DEFAULT_BUDGETS
    budget = budgets.get(target.precision) or DEFAULT_BUDGETS[target.precision]
    logits = outputs_of_kind(target.manifest["signature"], "logits")
    sorted_outputs = outputs_of_kind(target.manifest["signature"], SORTED_ROWS)
    reference = target.manifest["reference"]
    golden_in = _load(confined_path(target.bundle, reference["inputs"], "reference.inputs"))
    golden_out = _load(confined_path(target.bundle, reference["outputs"], "reference.outputs"))
    results, problems = _compare_served(target, golden_in, golden_out, budget, logits, sorted_outputs)
    report = {"checked": True, "precision": target.precision, "budget": budget,
              "golden": {"samples": len(next(iter(golden_in.values()))), **_entry(results, problems)}}
    all_problems = [f"golden: {p}" for p in problems]
    feeds = _random_inputs(target) if session is not None else None
    if session is not None and feeds is None:
        # The user's own inputs are what export used; a second look at more of them says nothing new.
        feeds = {name: array[:RANDOM_SAMPLES] for name, array in golden_in.items()}
    if session is not None:
        note = ""
        try:
            expected = _run_local(session, feeds, target)
        except Exception as exc:  # noqa: BLE001 - generated values the model cannot take say nothing about serving
            from portable_ep.exporters.errors import one_line

            note = f"the generated sample does not run in-process ({one_line(exc)}); the golden inputs were used instead"
            feeds = {name: array[:RANDOM_SAMPLES] for name, array in golden_in.items()}
            expected = _run_local(session, feeds, target)
        r_results, r_problems = _compare_served(target, feeds, expected, budget, logits, sorted_outputs)
        report["random"] = {"samples": len(next(iter(feeds.values()))), "seed": RANDOM_SEED,
                            "against": f"{target.provider} {target.precision} in-process", **_entry(r_results, r_problems)}
        if note:
            report["random"]["note"] = note
        all_problems += [f"random sample vs in-process: {p}" for p in r_problems]
    else:
        report["random"] = {"checked": False, "reason": session_reason}
    report["problems"], report["passed"] = all_problems, not all_problems
    return report


def worst_cosine(accuracy: dict) -> Optional[float]:
    outputs = ((accuracy.get("golden") or {}).get("outputs") or {}).values()
    values = [o["worst_cosine"] for o in outputs]
    return min(values) if values else None
