"""The table export prints: each variant, its size and its accuracy against the golden outputs."""
from __future__ import annotations

from rich.table import Table


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def variant_rows(manifest: dict):
    for variant in manifest["variants"]:
        for output, acc in variant["accuracy"]["outputs"].items():
            yield variant, output, acc


def print_export_report(result, console) -> None:
    manifest = result.manifest
    source = manifest["source"]
    table = Table(title=f"{manifest['name']}: {source['kind']} source, task {source['task'] or '-'}, "
                        f"golden outputs from {source['framework']} on {manifest['reference']['samples']} samples")
    for column in ("format", "precision", "file", "size", "output", "max |diff|", "cosine mean / worst", "top-1", "budget"):
        table.add_column(column)
    for variant, output, acc in variant_rows(manifest):
        ok = variant["within_budget"]
        table.add_row(
            variant["format"], variant["precision"], variant["file"], _fmt_size(variant["bytes"]), output,
            f"{acc['max_abs']:.2e}", f"{acc['cosine']:.5f} / {acc['worst_cosine']:.5f}", "-" if acc["top1"] is None else f"{acc['top1']:.3f}",
            "[green]within[/]" if ok else "[red]MISSED[/]",
        )
    console.print(table)
    for line in result.problems:
        console.print(f"[red]out of budget[/]: {line}")
    console.print(f"bundle: {result.bundle}")
