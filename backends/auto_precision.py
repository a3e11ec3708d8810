"""``precision: auto``: the fastest variant the exporter measured within budget, per provider.

Each provider orders the stored precisions it runs fastest first
(:meth:`Provider.auto_precision_order`); the first whose variant the bundle's
manifest marks ``within_budget`` wins. A plain ``model.onnx`` / ``model.xml`` has no
manifest, so only its fp32 weights qualify: nothing unmeasured is ever picked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from portable_ep.backends.artifacts import ModelArtifacts, Variant
from portable_ep.backends.base import Provider, ProviderUnavailable

AUTO = "auto"


@dataclass(frozen=True)
class AutoChoice:
    precision: str
    variant: Variant
    #: One line for the log: what was picked, its measured accuracy, and what was passed over.
    reason: str


def _qualifies(variant: Variant, manifest_present: bool) -> bool:
    if manifest_present:
        return variant.within_budget is True
    return variant.precision == "fp32"  # a hand-placed model file is the reference itself


def _cosine(variant: Variant) -> str:
    outputs = (variant.accuracy or {}).get("outputs", {})
    cosines = [m["cosine"] for m in outputs.values() if isinstance(m, dict) and m.get("cosine") is not None]
    return f", cosine {min(cosines):.5f}" if cosines else ""


def choose_auto_precision(provider: Provider, artifacts: ModelArtifacts, options: Mapping[str, str]) -> AutoChoice:
    order = tuple(provider.auto_precision_order(options))
    formats = tuple(provider.variant_formats)
    passed_over = []
    note = provider.auto_precision_note(options)
    note = f" ({note})" if note else ""
    for precision in order:
        variant = artifacts.find(formats, precision)
        if variant is None:
            passed_over.append(f"{precision}: not in the bundle")
            continue
        if not _qualifies(variant, artifacts.manifest is not None):
            passed_over.append(f"{precision}: out of budget" if artifacts.manifest is not None else f"{precision}: unmeasured")
            continue
        skipped = f" (passed over {'; '.join(passed_over)})" if passed_over else ""
        reason = (
            f"precision auto -> {precision} on {provider.name}: {variant.describe()}"
            f"{' within budget' + _cosine(variant) if variant.within_budget else ''}; "
            f"{provider.name}'s order fastest first is {', '.join(order)}{note}{skipped}"
        )
        return AutoChoice(precision, variant, reason)
    raise ProviderUnavailable(
        f"precision auto: none of {provider.name}'s precisions ({', '.join(order)}) has a "
        f"{'/'.join(formats)} variant measured within budget in {artifacts.root} ({'; '.join(passed_over)}); "
        "export those precisions or set parameter precision explicitly"
    )
