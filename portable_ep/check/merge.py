"""``portable-ep check merge``: one matrix across targets, from their report.json files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence

from portable_ep.check.accuracy import worst_cosine
from portable_ep.check.run import SCHEMA_VERSION
from portable_ep.check.verdict import CheckError


def load_reports(paths: Sequence) -> List[dict]:
    reports = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckError(f"cannot read report {path}: {exc}") from None
        if report.get("schema_version") != SCHEMA_VERSION:
            raise CheckError(f"{path} has report schema_version {report.get('schema_version')!r}; this portable-ep reads {SCHEMA_VERSION}")
        reports.append(report)
    return reports


def matrix_rows(reports: List[dict]) -> List[dict]:
    rows = []
    for report in reports:
        target = report.get("target") or {}
        levels = (report.get("latency") or {}).get("levels") or []
        at_one = next((lv for lv in levels if lv["concurrency"] == 1), None)
        top = levels[-1] if levels else None
        acc = report.get("accuracy") or {}
        if (report.get("latency") or {}).get("kind") == "generation":
            rows.append(_generation_row(report, target, acc, levels))
            continue
        rows.append({
            "target": target.get("label"), "provider": target.get("provider"), "precision": target.get("precision"),
            "accuracy": ("pass" if acc.get("passed") else "FAIL") if acc.get("checked") else "not checked",
            "worst_cosine": worst_cosine(acc) if acc.get("checked") else None,
            "p50_ms_c1": at_one["p50_ms"] if at_one else None,
            "p99_ms_top": top["p99_ms"] if top else None, "top_concurrency": top["concurrency"] if top else None,
            "throughput_top": top["throughput"] if top else None,
            "served_to_raw_top": top["served_to_raw"] if top else None,
            "exit_code": report["verdict"]["exit_code"], "reason": report["verdict"]["reason"],
        })
    return rows


def _generation_row(report: dict, target: dict, acc: dict, levels: list) -> dict:
    """A generative model's row: latency columns hold TTFT/ITL and tokens/s (the unit says so)."""
    at_one = next((lv for lv in levels if lv["concurrency"] == 1), None)
    top = levels[-1] if levels else None
    forced = acc.get("teacher_forced") or {}
    return {
        "target": target.get("label"), "provider": target.get("provider"), "precision": target.get("precision"),
        "accuracy": ("pass" if acc.get("passed") else "FAIL") if acc.get("checked") else "not checked",
        "worst_cosine": None, "top1_agreement": forced.get("top1_agreement"), "kind": "generation",
        "p50_ms_c1": at_one["itl_p50_ms"] if at_one else None, "ttft_p50_ms_c1": at_one["ttft_p50_ms"] if at_one else None,
        "p99_ms_top": top["itl_p99_ms"] if top else None, "top_concurrency": top["concurrency"] if top else None,
        "throughput_top": top["tokens_per_s"] if top else None,
        "served_to_raw_top": top["served_to_inprocess"] if top else None,
        "exit_code": report["verdict"]["exit_code"], "reason": report["verdict"]["reason"],
    }


def _f(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(rows: List[dict]) -> str:
    lines = ["| target | provider | precision | accuracy (worst cosine) | p50 ms @1 | p99 ms @top | inferences/s @top | served/raw @top | exit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("kind") == "generation":  # latency columns hold inter-token latency, throughput output tokens/s
            lines.append(f"| {r['target']} | {r['provider'] or '?'} | {r['precision']} | {r['accuracy']} (top-1 {_f(r['top1_agreement'], '.3f')}) | "
                         f"ITL {_f(r['p50_ms_c1'], '.2f')}, TTFT {_f(r['ttft_p50_ms_c1'], '.1f')} | ITL {_f(r['p99_ms_top'], '.2f')} (c{r['top_concurrency']}) | "
                         f"{_f(r['throughput_top'], '.1f')} tokens/s | {_f(r['served_to_raw_top'], '.3f')} | {r['exit_code']} |")
            continue
        lines.append(f"| {r['target']} | {r['provider'] or '?'} | {r['precision']} | {r['accuracy']} ({_f(r['worst_cosine'], '.5f')}) | "
                     f"{_f(r['p50_ms_c1'], '.2f')} | {_f(r['p99_ms_top'], '.2f')} (c{r['top_concurrency']}) | "
                     f"{_f(r['throughput_top'], '.1f')} | {_f(r['served_to_raw_top'], '.3f')} | {r['exit_code']} |")
    failing = [r for r in rows if r["exit_code"]]
    lines += [""] + [f"- {r['target']}: {r['reason']}" for r in failing]
    return "\n".join(lines) + "\n"


def write_plot(rows: List[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["target"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.5 * len(rows) + 2.5))
    colors = ["tab:red" if r["exit_code"] else "tab:green" for r in rows]
    left.barh(names, [r["throughput_top"] or 0 for r in rows], color=colors)
    left.set(xlabel="inferences / s at the highest concurrency", title="throughput (red: check failed)")
    left.invert_yaxis()
    p50 = [r["p50_ms_c1"] or 0 for r in rows]
    p99 = [r["p99_ms_top"] or 0 for r in rows]
    ys = range(len(rows))
    right.barh([y - 0.2 for y in ys], p50, height=0.4, label="p50 at concurrency 1")
    right.barh([y + 0.2 for y in ys], p99, height=0.4, label="p99 at the highest concurrency")
    right.set_yticks(list(ys), names)
    right.invert_yaxis()
    right.set(xlabel="latency (ms)", title="latency")
    right.legend()
    fig.tight_layout()
    path = out / "matrix.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merge(paths: Sequence, out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = matrix_rows(load_reports(paths))
    (out / "matrix.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "rows": rows}, indent=2) + "\n")
    text = markdown(rows)
    (out / "matrix.md").write_text(text)
    write_plot(rows, out)
    return {"rows": rows, "markdown": text, "out": out}
