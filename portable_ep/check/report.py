"""report.json (versioned), report.md (one table) and report.png for one target."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Optional


def write_json(report: dict, out: Path) -> Path:
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def generation_accuracy_lines(acc: dict) -> List[str]:
    lines = []
    for row in acc.get("greedy") or []:
        lines.append(f"greedy (temperature 0) …{row['prompt'][-40:]!r}: {row['matched']}/{row['tokens']} tokens as the source"
                     + (" (identical)" if row["identical"] else f"; served {row['served'][:80]!r}"))
    forced = acc.get("teacher_forced") or {}
    if forced.get("checked") is False:
        lines.append(f"teacher-forced: not checked ({forced.get('reason')})")
    elif forced:
        lines.append(f"teacher-forced ({forced['tokens']} tokens, {acc['precision']} in-process): top-1 agreement "
                     f"{forced['top1_agreement']:.3f}, perplexity {forced['perplexity']:.3f} vs source "
                     f"{forced['reference_perplexity']:.3f} (ratio {forced['perplexity_ratio']:.3f})")
    return lines + [f"PROBLEM: {p}" for p in acc.get("problems", [])]


def accuracy_lines(report: dict) -> List[str]:
    acc = report.get("accuracy") or {}
    if not acc.get("checked"):
        return [f"accuracy: not checked ({acc.get('reason', 'no report')})"]
    if "greedy" in acc:
        return generation_accuracy_lines(acc)
    lines = []
    for part in ("golden", "random"):
        entry = acc.get(part) or {}
        if entry.get("checked") is False:
            lines.append(f"accuracy ({part}): not checked ({entry.get('reason')})")
            continue
        for name, a in (entry.get("outputs") or {}).items():
            top1 = "" if a.get("top1") is None else f", top-1 {a['top1']:.3f}"
            lines.append(f"accuracy ({part}, {acc['precision']} budget) {name}: max |diff| {a['max_abs']:.3g}, "
                         f"max rel {a['max_rel']:.3g}, cosine mean {a['cosine']:.6f} / worst {a['worst_cosine']:.6f}{top1}")
    lines += [f"PROBLEM: {p}" for p in acc.get("problems", [])]
    return lines


def markdown(report: dict) -> str:
    target = report.get("target") or {}
    lines = [f"# portable-ep check: {target.get('label', '?')}", "",
             f"- model `{target.get('model')}` at {target.get('url')} ({target.get('protocol')}), served by "
             f"**{target.get('provider') or '?'}** at **{target.get('precision')}**: {target.get('provider_description') or ''}",
             f"- route: **{target.get('route') or 'unknown'}** (how the provider's route to the model was measured)",
             f"- verdict: exit {report['verdict']['exit_code']} — {report['verdict']['reason']}", ""]
    lines += [f"- {line}" for line in accuracy_lines(report)]
    latency = report.get("latency")
    if latency and latency.get("kind") == "generation":
        lines += ["", f"{latency['max_tokens']} tokens per request, streamed over gRPC:", "",
                  "| concurrency | requests | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tokens/s | in-process tokens/s | served/in-process |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for lv in latency["levels"]:
            lines.append(f"| {lv['concurrency']} | {lv['requests']} | {lv['ttft_p50_ms']:.1f} | {lv['ttft_p99_ms']:.1f} | "
                         f"{lv['itl_p50_ms']:.2f} | {lv['itl_p99_ms']:.2f} | {lv['tokens_per_s']:.1f} | "
                         f"{_fmt(lv['inprocess_tokens_per_s'], '.1f')} | {_fmt(lv['served_to_inprocess'], '.3f')} |")
        lines += ["", f"in-process: {latency['raw']}"] + [f"- PROBLEM: {p}" for p in latency["problems"]]
    elif latency:
        lines += ["", "| concurrency (asked / achieved) | requests | p50 ms | p90 ms | p99 ms | inferences/s | raw inf/s (batch) | served/raw |",
                  "|---|---|---|---|---|---|---|---|"]
        for lv in latency["levels"]:
            raw = "-" if lv["raw_throughput"] is None else f"{lv['raw_throughput']:.1f} (b{lv['raw_batch']})"
            lines.append(f"| {lv['concurrency']} / {lv['achieved_concurrency']:.1f} | {lv['requests']} | {lv['p50_ms']:.2f} | "
                         f"{lv['p90_ms']:.2f} | {lv['p99_ms']:.2f} | {lv['throughput']:.1f} | {raw} | {_fmt(lv['served_to_raw'], '.3f')} |")
        lines += ["", f"raw: {latency['raw']}"] + [f"- PROBLEM: {p}" for p in latency["problems"]]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, out: Path) -> Path:
    path = out / "report.md"
    path.write_text(markdown(report))
    return path


def write_plot(report: dict, out: Path) -> Optional[Path]:
    latency = report.get("latency")
    if not latency:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = latency["levels"]
    conc = [lv["concurrency"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if latency.get("kind") == "generation":
        _plot_generation(left, right, levels, conc)
        return _save(fig, plt, report, out)
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        left.plot(conc, [lv[key] for lv in levels], marker="o", label=label)
    left.set(xscale="log", xlabel="concurrency (requests in flight)", ylabel="latency (ms)", title="latency percentiles")
    left.set_xticks(conc, [str(c) for c in conc])
    left.legend()
    left.grid(alpha=0.3)
    right.plot(conc, [lv["throughput"] for lv in levels], marker="o", label="served")
    if any(lv["raw_throughput"] for lv in levels):
        right.plot(conc, [lv["raw_throughput"] or float("nan") for lv in levels], marker="s", linestyle="--",
                   label="in-process (same provider, batch min(c, max batch))")
    right.set(xscale="log", xlabel="concurrency (requests in flight)", ylabel="inferences / s", title="throughput")
    right.set_xticks(conc, [str(c) for c in conc])
    right.set_ylim(bottom=0)
    right.legend()
    right.grid(alpha=0.3)
    return _save(fig, plt, report, out)


def _plot_generation(left, right, levels, conc) -> None:
    for key, label in (("ttft_p50_ms", "TTFT p50"), ("ttft_p99_ms", "TTFT p99"), ("itl_p50_ms", "ITL p50"), ("itl_p99_ms", "ITL p99")):
        left.plot(conc, [lv[key] for lv in levels], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="concurrency (streams)", ylabel="ms", title="time to first token, inter-token latency")
    left.set_xticks(conc, [str(c) for c in conc])
    left.legend()
    left.grid(alpha=0.3)
    right.plot(conc, [lv["tokens_per_s"] for lv in levels], marker="o", label="served")
    if any(lv["inprocess_tokens_per_s"] for lv in levels):
        right.plot(conc, [lv["inprocess_tokens_per_s"] or float("nan") for lv in levels], marker="s", linestyle="--",
                   label="same engine in-process")
    right.set(xscale="log", xlabel="concurrency (streams)", ylabel="output tokens / s", title="throughput")
    right.set_xticks(conc, [str(c) for c in conc])
    right.set_ylim(bottom=0)
    right.legend()
    right.grid(alpha=0.3)


def _save(fig, plt, report: dict, out: Path) -> Path:
    target = report.get("target") or {}
    fig.suptitle(f"{target.get('label')} — {report['verdict']['reason']}", fontsize=10)
    fig.tight_layout()
    path = out / "report.png"
    with warnings.catch_warnings():  # a title quoting generated text may hold glyphs the font lacks
        warnings.simplefilter("ignore", UserWarning)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
