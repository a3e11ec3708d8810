"""Run the whole check on one target and decide its exit code."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from portable_ep.check import verdict
from portable_ep.check.accuracy import check_accuracy
from portable_ep.check.generation import (GenerationCheckOptions, check_generation_accuracy, check_generation_latency,
                                          is_generative)
from portable_ep.check.loadgen import sweep
from portable_ep.check.local import local_session
from portable_ep.check.raw import raw_throughput
from portable_ep.check.target import Target, resolve

SCHEMA_VERSION = 1


@dataclass
class LatencyBudget:
    p99_ms_at_1: Optional[float] = None  # p99 latency at concurrency 1
    min_ratio: Optional[float] = None  # served / raw throughput at the highest concurrency

    def as_dict(self) -> dict:
        return {"p99_ms_at_concurrency_1": self.p99_ms_at_1, "min_served_to_raw_ratio": self.min_ratio}


@dataclass
class CheckOptions:
    concurrency: Optional[Sequence[int]] = None  # default: 1,4,16 (generative models: 1,4,8)
    requests: Optional[int] = None  # per level; default: 400 (generative models: 2 per client, at least 4)
    warmup: int = 20
    raw_seconds: float = 2.0
    budget: LatencyBudget = field(default_factory=LatencyBudget)
    max_tokens: int = 64  # generative models: tokens per request in the latency sweep


def _one_request(target: Target) -> dict:
    from portable_ep.exporters.samples import first_request

    from portable_ep.backends.bundle_paths import confined_path
    from portable_ep.backends.dtypes import restore_bfloat16

    with np.load(confined_path(target.bundle, target.manifest["reference"]["inputs"], "reference.inputs")) as data:
        return first_request({name: restore_bfloat16(data[name]) for name in data.files}, target.batched)


def _latency(target: Target, options: CheckOptions, session, session_reason: str) -> dict:
    request = _one_request(target)
    levels = [level.as_dict() for level in sweep(target.url, target.protocol, target.model, request,
                                                   options.concurrency or (1, 4, 16), options.requests or 400, options.warmup)]
    for level in levels:
        batch = min(level["concurrency"], target.max_batch_size or 1)
        level["raw_batch"] = batch
        level["raw_throughput"] = raw_throughput(session, request, batch, options.raw_seconds) if session else None
        level["served_to_raw"] = level["throughput"] / level["raw_throughput"] if level["raw_throughput"] else None
    problems = []
    for level in levels:
        if level["errors"]:
            problems.append(f"{level['errors']} of {level['errors'] + level['requests']} requests failed at concurrency "
                            f"{level['concurrency']}: {level['first_error']}")
    budget = options.budget
    at_one = next((lv for lv in levels if lv["concurrency"] == 1), None)
    if budget.p99_ms_at_1 is not None and at_one and at_one["p99_ms"] > budget.p99_ms_at_1:
        problems.append(f"p99 at concurrency 1 is {at_one['p99_ms']:.2f} ms, over the budget {budget.p99_ms_at_1:g} ms "
                        f"by {at_one['p99_ms'] - budget.p99_ms_at_1:.2f} ms")
    top = levels[-1]
    if budget.min_ratio is not None:
        if top["served_to_raw"] is None:
            problems.append(f"served/raw ratio not measured ({session_reason}), so the budget {budget.min_ratio} cannot be met")
        elif top["served_to_raw"] < budget.min_ratio:
            problems.append(f"served/raw throughput at concurrency {top['concurrency']} is {top['served_to_raw']:.3f}, "
                            f"below the budget {budget.min_ratio} by {budget.min_ratio - top['served_to_raw']:.3f}")
    return {"levels": levels, "budget": budget.as_dict(), "raw": "in-process on the serving provider" if session else session_reason,
            "problems": problems, "passed": not problems}


def run_check(target: Target, options: Optional[CheckOptions] = None) -> dict:
    """The report dict; ``report["verdict"]["exit_code"]`` is what the CLI exits with."""
    from portable_ep.exporters.manifest import now_utc, tool_versions

    options = options or CheckOptions()
    report = {"schema_version": SCHEMA_VERSION, "created": now_utc(), "tools": tool_versions(("portable-ep", "tritonclient"))}
    try:
        resolve(target)
        report["target"] = target.as_dict()
        session, session_reason = local_session(target)
        try:
            if is_generative(target):
                if target.protocol != "grpc":
                    raise verdict.CheckError("a generative model is checked over gRPC streaming: drop --protocol http")
                report["accuracy"] = check_generation_accuracy(target, session, session_reason)
                report["latency"] = check_generation_latency(target, GenerationCheckOptions(
                    options.concurrency or (1, 4, 8), options.requests, options.max_tokens, options.budget.min_ratio),
                    session, session_reason)
            else:
                report["accuracy"] = check_accuracy(target, session, session_reason)
                report["latency"] = _latency(target, options, session, session_reason)
        finally:
            if session is not None:
                session.close()
    except verdict.CheckError as exc:
        report.setdefault("target", target.as_dict())
        report["verdict"] = {"exit_code": verdict.UNREACHABLE, "reason": str(exc)}
        return report
    if not report["accuracy"]["passed"]:
        first = report["accuracy"]["problems"][0]
        more = len(report["accuracy"]["problems"]) - 1
        report["verdict"] = {"exit_code": verdict.ACCURACY_FAILED,
                             "reason": f"accuracy failed: {first}" + (f" (and {more} more)" if more else "")}
    elif not report["latency"]["passed"]:
        report["verdict"] = {"exit_code": verdict.LATENCY_MISSED, "reason": f"latency budget missed: {report['latency']['problems'][0]}"}
    else:
        report["verdict"] = {"exit_code": verdict.OK, "reason": "accuracy within budget and latency within budget"}
    return report


def check_exit(report: dict) -> int:
    return int(report["verdict"]["exit_code"])


def write_reports(report: dict, out_dir: Path) -> dict:
    from portable_ep.check.report import write_json, write_markdown, write_plot

    out_dir.mkdir(parents=True, exist_ok=True)
    return {"json": write_json(report, out_dir), "md": write_markdown(report, out_dir), "png": write_plot(report, out_dir)}
