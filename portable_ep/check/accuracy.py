"""Accuracy: the bundle's golden inputs, served, against its golden outputs, within the budget
of the precision being served; plus a seeded random sample, served, against the same provider
and precision run in-process (it proves batching and transport change nothing)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from portable_ep.check.target import Target
from portable_ep.exporters.accuracy import DEFAULT_BUDGETS, compare_outputs

RANDOM_SEED = 12345
RANDOM_SAMPLES = 8


def _load(path) -> Dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def serve(target: Target, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    from portable_ep.client import infer_once, make_client

    rows = len(next(iter(feeds.values())))
    chunk = target.max_batch_size or rows
    client = make_client(target.protocol, target.url)
    try:
        parts = [infer_once(target.protocol, target.url, target.model, {k: v[i:i + chunk] for k, v in feeds.items()}, client)
                 for i in range(0, rows, chunk)]
    finally:
        client.close()
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _run_local(session, feeds, chunk: int) -> Dict[str, np.ndarray]:
    rows = len(next(iter(feeds.values())))
    parts = [session.run({k: v[i:i + chunk] for k, v in feeds.items()}) for i in range(0, rows, chunk)]
    return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}


def _random_inputs(target: Target) -> Dict[str, np.ndarray]:
    from portable_ep.exporters.inputs import generate_inputs, vocab_sizes_from_onnx
    from portable_ep.exporters.signature import Signature

    signature = Signature.from_dict(target.manifest["signature"])
    onnx_path = target.bundle / "model.onnx"
    vocab = vocab_sizes_from_onnx(onnx_path, signature) if onnx_path.is_file() else {}
    sequence = (target.manifest.get("reference") or {}).get("sequence_length", 16)
    return generate_inputs(signature, RANDOM_SAMPLES, seed=RANDOM_SEED, sequence_length=sequence, vocab_sizes=vocab)


def _entry(results, problems) -> dict:
    return {"outputs": {name: acc.as_dict() for name, acc in results.items()}, "problems": problems, "passed": not problems}


def check_accuracy(target: Target, session=None, session_reason: str = "") -> dict:
    if target.manifest is None:
        return {"checked": False, "reason": "no --bundle given: nothing to compare with", "passed": True, "problems": []}
    budgets = target.manifest.get("budgets") or DEFAULT_BUDGETS
    budget = budgets.get(target.precision) or DEFAULT_BUDGETS[target.precision]
    logits = [name for name, kind in (target.manifest["signature"].get("output_kinds") or {}).items() if kind == "logits"]
    reference = target.manifest["reference"]
    golden_in, golden_out = _load(target.bundle / reference["inputs"]), _load(target.bundle / reference["outputs"])
    results, problems = compare_outputs(golden_out, serve(target, golden_in), budget, target.precision, logits)
    report = {"checked": True, "precision": target.precision, "budget": budget,
              "golden": {"samples": len(next(iter(golden_in.values()))), **_entry(results, problems)}}
    all_problems = [f"golden: {p}" for p in problems]
    if session is not None:
        feeds = _random_inputs(target)
        expected = _run_local(session, feeds, target.max_batch_size or RANDOM_SAMPLES)
        r_results, r_problems = compare_outputs(expected, serve(target, feeds), budget, target.precision, logits)
        report["random"] = {"samples": RANDOM_SAMPLES, "seed": RANDOM_SEED, "against": f"{target.provider} {target.precision} in-process",
                            **_entry(r_results, r_problems)}
        all_problems += [f"random sample vs in-process: {p}" for p in r_problems]
    else:
        report["random"] = {"checked": False, "reason": session_reason}
    report["problems"], report["passed"] = all_problems, not all_problems
    return report


def worst_cosine(accuracy: dict) -> Optional[float]:
    outputs = ((accuracy.get("golden") or {}).get("outputs") or {}).values()
    values = [o["worst_cosine"] for o in outputs]
    return min(values) if values else None
