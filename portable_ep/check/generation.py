"""The check for a generative model: greedy parity with the source, and latency as LLM users measure it.

Accuracy, against the bundle's golden data (``golden/generation.json``):
- greedy: each golden prompt streamed from the served model at temperature 0 and
  compared with the source framework's greedy continuation (tokens matched in order);
  fp32 must match every token;
- teacher-forced: the built-in text run in-process on the serving provider and
  precision, next-token top-1 agreement with the source and the perplexity ratio,
  judged by the bundle's budgets for that precision (int8/int4 are judged by these:
  their greedy text may leave the source's after a near tie and still be a good model).

Latency, per concurrency level: time to first token, inter-token latency (p50/p99) and
output tokens/s over gRPC streams, beside the same engine loop in-process on the same
provider (the limit serving can reach).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from portable_ep.check.target import Target

GOLDEN_FILE = "golden/generation.json"


@dataclass
class GenerationCheckOptions:
    concurrency: Sequence[int] = (1, 4, 8)
    requests_per_level: Optional[int] = None  # default: 2 per client, at least 4
    max_tokens: int = 64
    min_ratio: Optional[float] = None  # served / in-process tokens/s at the highest concurrency


def is_generative(target: Target) -> bool:
    return bool(target.manifest and target.manifest.get("task") == "text-generation") or (
        "text_input" in target.inputs and "text_output" in target.outputs)


def load_golden(target: Target) -> dict:
    info = target.manifest.get("decoder") or {}
    from portable_ep.backends.bundle_paths import confined_path

    return json.loads(confined_path(target.bundle, info.get("golden", GOLDEN_FILE), "decoder.golden").read_text())


def _tokenizer(target: Target):
    from portable_ep.generation.bundle import bundle_tokenizer

    return bundle_tokenizer(target.bundle, target.manifest)


def matched_tokens(tokenizer, expected_ids: Sequence[int], served_text: str) -> int:
    """How many of the expected tokens the served text reproduces, in order from the start."""
    matched = 0
    for k in range(1, len(expected_ids) + 1):
        # a prefix can end inside a multi-byte character, decoded as U+FFFD until the next token
        if served_text.startswith(tokenizer.decode(expected_ids[:k]).rstrip("\ufffd")):
            matched = k
        else:
            break
    return matched


def _greedy(target: Target, golden: dict, tokenizer, eos_ids) -> List[dict]:
    from portable_ep.generation.client import StreamingClient

    rows = []
    with StreamingClient(target.url, target.model) as client:
        for prompt in golden["prompts"]:
            expected = [t for t in prompt["greedy_ids"] if t not in eos_ids]
            result = client.generate(prompt["text"], {"max_tokens": len(prompt["greedy_ids"]), "temperature": 0})
            matched = matched_tokens(tokenizer, expected, result.text)
            rows.append({"prompt": prompt["text"][-60:], "tokens": len(expected), "matched": matched,
                         "identical": matched == len(expected) and result.text == tokenizer.decode(expected),
                         "served": result.text[:200], "expected": tokenizer.decode(expected)[:200]})
    return rows


def teacher_forced(session, manifest: dict, golden: dict) -> dict:
    """Top-1 agreement and perplexity of the session on the golden text, against the source's."""
    from portable_ep.generation.bundle import bundle_decoder

    forced = golden["teacher_forced"]
    ids = forced["ids"]
    logits = bundle_decoder(session, manifest).teacher_forced_logits(ids)[:-1]
    targets = np.asarray(ids[1:])
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    nll = float(-log_probs[np.arange(len(targets)), targets].mean())
    agreement = float((logits.argmax(axis=-1) == np.asarray(forced["reference_top1"][: len(targets)])).mean())
    perplexity = float(np.exp(nll))
    return {"tokens": len(targets), "top1_agreement": agreement, "perplexity": perplexity,
            "reference_perplexity": forced["reference_perplexity"],
            "perplexity_ratio": perplexity / forced["reference_perplexity"]}


def teacher_forced_problems(figures: dict, budget: dict) -> List[str]:
    """Budget lines a precision's teacher-forced figures miss (export and check judge with this one rule)."""
    problems = []
    if budget.get("min_top1_agreement") is not None and figures["top1_agreement"] < budget["min_top1_agreement"]:
        problems.append(f"teacher-forced top-1 agreement {figures['top1_agreement']:.3f} < {budget['min_top1_agreement']}")
    if budget.get("max_perplexity_ratio") is not None and figures["perplexity_ratio"] > budget["max_perplexity_ratio"]:
        problems.append(f"perplexity ratio {figures['perplexity_ratio']:.3f} > {budget['max_perplexity_ratio']}")
    return problems


def check_generation_accuracy(target: Target, session, session_reason: str) -> dict:
    if target.manifest is None:
        return {"checked": False, "reason": "no --bundle given: nothing to compare with", "passed": True, "problems": []}
    golden = load_golden(target)
    tokenizer = _tokenizer(target)
    eos = set((target.manifest.get("decoder") or {}).get("eos_token_ids") or [])
    budget = (target.manifest.get("budgets") or {}).get(target.precision) or {}
    problems: List[str] = []
    try:
        greedy = _greedy(target, golden, tokenizer, eos)
    except Exception as exc:  # noqa: BLE001 - the server's refusal is the finding
        from portable_ep.exporters.errors import one_line

        return {"checked": True, "precision": target.precision, "passed": False,
                "problems": [f"the server refused a golden prompt: {one_line(exc)}"], "budget": budget}
    if budget.get("greedy_identical"):
        for row in greedy:
            if not row["identical"]:
                problems.append(f"greedy: {row['matched']} of {row['tokens']} tokens match the source for prompt "
                                f"…{row['prompt'][-30:]!r} (served {row['served'][:60]!r}, expected {row['expected'][:60]!r})")
    report = {"checked": True, "precision": target.precision, "budget": budget, "greedy": greedy}
    if session is None:
        report["teacher_forced"] = {"checked": False, "reason": session_reason}
    else:
        forced = teacher_forced(session, target.manifest, golden)
        report["teacher_forced"] = forced
        problems += teacher_forced_problems(forced, budget)
    report["problems"], report["passed"] = problems, not problems
    return report


def _engine(target: Target, session):
    from portable_ep.generation.bundle import bundle_engine

    return bundle_engine(session, target.bundle, target.manifest, 4 << 30, 64)


def check_generation_latency(target: Target, options: GenerationCheckOptions, session, session_reason: str) -> dict:
    from portable_ep.generation.load import inprocess_level, served_level

    if target.manifest is not None:
        prompt = load_golden(target)["prompts"][0]["text"]
    else:
        prompt = "Write a short story about a lighthouse keeper."
    engine = _engine(target, session) if session is not None and target.manifest is not None else None
    prompt_ids = engine.tokenizer.encode(prompt) if engine else []
    levels = []
    for concurrency in options.concurrency:
        per_client = max(2, -(-(options.requests_per_level or max(4, 2 * concurrency)) // concurrency))
        level = served_level(target.url, target.model, prompt, options.max_tokens, concurrency, per_client)
        level["inprocess_tokens_per_s"] = None
        if engine is not None:
            level["inprocess_tokens_per_s"] = inprocess_level(engine, prompt_ids, options.max_tokens, concurrency)["tokens_per_s"]
        level["served_to_inprocess"] = (level["tokens_per_s"] / level["inprocess_tokens_per_s"]
                                        if level["inprocess_tokens_per_s"] else None)
        levels.append(level)
    problems = [f"{lv['errors']} of {lv['errors'] + lv['requests']} requests failed at concurrency {lv['concurrency']}: "
                f"{lv['first_error']}" for lv in levels if lv["errors"]]
    top = levels[-1]
    if options.min_ratio is not None:
        if top["served_to_inprocess"] is None:
            problems.append(f"served/in-process ratio not measured ({session_reason}), so the budget {options.min_ratio} cannot be met")
        elif top["served_to_inprocess"] < options.min_ratio:
            problems.append(f"served/in-process tokens/s at concurrency {top['concurrency']} is {top['served_to_inprocess']:.3f}, "
                            f"below the budget {options.min_ratio}")
    return {"kind": "generation", "levels": levels, "max_tokens": options.max_tokens, "prompt_tokens": len(prompt_ids) or None,
            "raw": "the same engine loop in-process on the serving provider" if engine else session_reason,
            "budget": {"min_served_to_inprocess": options.min_ratio}, "problems": problems, "passed": not problems}
