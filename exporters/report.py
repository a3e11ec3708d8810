"""The table export prints: each variant, its size and its accuracy against the golden outputs."""
from __future__ import annotations

from rich.table import Table


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def variant_rows(manifest: dict):
    for variant in manifest["variants"]:
        outputs = (variant.get("accuracy") or {}).get("outputs") or {}
        if not outputs:
            yield variant, "-", None
        for output, acc in outputs.items():
            yield variant, output, acc


def _status(variant: dict) -> str:
    status = variant.get("status", "ok" if variant.get("within_budget") else "out_of_budget")
    if status == "ok":
        return "[green]within[/]"
    if status == "failed":
        return "[red]FAILED[/]"
    return "[yellow]MISSED[/]" + ("" if variant.get("file") else " (left out)")


def print_export_report(result, console) -> None:
    manifest = result.manifest
    source = manifest["source"]
    table = Table(title=f"{manifest['name']}: {source['kind']} source, task {source['task'] or '-'}, "
                        f"golden outputs from {source['framework']} on {manifest['reference']['samples']} samples")
    for column in ("format", "precision", "file", "size", "output", "max |diff|", "cosine mean / worst", "top-1", "budget"):
        table.add_column(column)
    for variant, output, acc in variant_rows(manifest):
        size = _fmt_size(variant["bytes"]) if variant.get("file") and "bytes" in variant else "-"
        if acc is None:
            table.add_row(variant["format"], variant["precision"], variant.get("file") or "-", size, output, "-", "-", "-", _status(variant))
            continue
        table.add_row(
            variant["format"], variant["precision"], variant.get("file") or "-", size, output,
            f"{acc['max_abs']:.2e}", f"{acc['cosine']:.5f} / {acc['worst_cosine']:.5f}", "-" if acc["top1"] is None else f"{acc['top1']:.3f}",
            _status(variant),
        )
    console.print(table)
    opset = manifest["source"].get("opset") or {}
    if opset.get("upgraded_to"):
        console.print(f"opset {opset['source']} upgraded to {opset['upgraded_to']} (judged against the original file's outputs)")
    elif opset.get("upgrade_failed") or opset.get("upgrade_reverted"):
        console.print(f"opset {opset['source']} kept: {opset.get('upgrade_failed') or opset.get('upgrade_reverted')}")
    batching = manifest.get("batching") or {}
    if not batching.get("batched", True):
        console.print(f"not batched ({batching.get('reason')}): `repo add` gives it max_batch_size 0")
    for line in result.problems:
        console.print(f"[yellow]warning[/]: {line}")
    console.print(f"bundle: {result.bundle}")


def print_generative_report(result, console) -> None:
    """The generative bundle's variants: size, greedy tokens matched, teacher-forced agreement, perplexity ratio."""
    manifest = result.manifest
    info = manifest["decoder"]
    table = Table(title=f"{manifest['name']}: {info['architecture']}, {info['num_layers']} layers, context "
                        f"{info['context_length']}; golden from {manifest['source']['framework']}")
    for column in ("format", "precision", "file", "size", "greedy tokens = source", "top-1 (teacher-forced)", "perplexity ratio", "budget"):
        table.add_column(column)
    for v in manifest["variants"]:
        acc = v.get("accuracy") or {}
        size = _fmt_size(v["bytes"]) if v.get("file") and "bytes" in v else "-"
        greedy = "/".join(str(m) for m in acc.get("greedy_matched_tokens", [])) or "-"
        table.add_row(v["format"], v["precision"], v.get("file") or "-", size, greedy,
                      f"{acc['top1_agreement']:.3f}" if acc else "-", f"{acc['perplexity_ratio']:.3f}" if acc else "-",
                      _status(v))
    console.print(table)
    for line in result.problems:
        console.print(f"[yellow]warning[/]: {line}")
    console.print(f"bundle: {result.bundle}")
