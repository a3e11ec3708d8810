"""Serve only what was measured: judge the route a provider loaded before the model turns ready.

The provider chain calls :func:`judge_route` on each session it loads (see
``portable_ep.backends.routes`` for what a route is). A route export measured within
budget serves. A route export measured out of budget was already refused when the
provider chose its variant. A route export never ran (OpenVINO reading ``model.onnx``
where the IR was left out, an NPU or a GPU that was not on the exporting machine, bf16
computed on fp32 weights) is measured here, on this provider, against the bundle's golden
data, with the served precision's budget, and refused if it misses — so the chain falls
back to the next provider with the figures in the log. The parameter
``allow_unmeasured=true`` serves such routes without measuring them, and the log,
``/metrics`` (``portable_ep_model_info{route=...}``) and ``portable-ep check`` say so.

A version folder with a plain ``model.onnx``/``model.xml`` (a Triton operator's own
repository) or a hand-made manifest without golden data has nothing to measure against:
it is served as given, and labelled that way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping

import numpy as np

from portable_ep.backends.artifacts import ModelArtifacts
from portable_ep.backends.base import ProviderUnavailable, Session
from portable_ep.backends.routes import ALLOW_UNMEASURED, OUT_OF_BUDGET, UNMEASURED, WITHIN_BUDGET, route_verdict

#: ``portable_ep_model_info``'s ``route`` label: how the route serving the model was measured.
MEASURED_AT_EXPORT = "measured-at-export"
MEASURED_AT_LOAD = "measured-at-load"
UNMEASURED_ALLOWED = "unmeasured-allowed"
OUT_OF_BUDGET_ALLOWED = "out-of-budget-allowed"
NOTHING_TO_MEASURE = "no-golden-data"

#: Samples per runtime call while measuring at load (export measures with the same size).
MEASURE_BATCH = 8


@dataclass(frozen=True)
class RouteNote:
    label: str  # one of the labels above
    line: str  # for the log


def _load_npz(path) -> Dict[str, np.ndarray]:
    from portable_ep.backends.dtypes import restore_bfloat16

    with np.load(path, allow_pickle=False) as data:
        return {name: restore_bfloat16(data[name]) for name in data.files}


def _encoder_problems(session: Session, artifacts: ModelArtifacts, precision: str) -> list:
    from portable_ep.exporters.accuracy import DEFAULT_BUDGETS, SORTED_ROWS, compare_outputs, outputs_of_kind
    from portable_ep.exporters.samples import run_samples

    manifest = artifacts.manifest
    reference = manifest.get("reference") or {}
    inputs = _load_npz(artifacts.root / reference.get("inputs", "reference/inputs.npz"))
    golden = _load_npz(artifacts.root / reference.get("outputs", "reference/outputs.npz"))
    signature = manifest.get("signature") or {}
    batched = bool(signature.get("batched", True))
    logits = outputs_of_kind(signature, "logits")
    budget = (manifest.get("budgets") or {}).get(precision) or DEFAULT_BUDGETS.get(precision) or DEFAULT_BUDGETS["fp32"]
    batch = MEASURE_BATCH
    if batched:
        # A session compiled for a static batch (the npu contract: [1, 16]) takes exactly that many
        # samples a call: measure on as many whole calls as the golden samples fill.
        static = {t.shape[0] for t in session.inputs if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0}
        if len(static) == 1:
            batch = static.pop()
            samples = len(next(iter(inputs.values())))
            whole = samples // batch * batch
            if not whole:
                return [f"the golden data holds {samples} samples, fewer than the session's static batch {batch}"]
            inputs = {name: array[:whole] for name, array in inputs.items()}
            golden = {name: array[:whole] for name, array in golden.items()}
    outputs = run_samples(session.run, inputs, batched, batch)
    _, problems = compare_outputs(golden, outputs, budget, precision, logits, outputs_of_kind(signature, SORTED_ROWS))
    return problems


def _golden_file(manifest: Mapping) -> str:
    return (manifest.get("decoder") or {}).get("golden") or "golden/generation.json"


def _generative_problems(session: Session, artifacts: ModelArtifacts, precision: str) -> list:
    import json

    from portable_ep.exporters.llm_export import budget_problems, measure_variant

    manifest = artifacts.manifest
    golden = json.loads((artifacts.root / _golden_file(manifest)).read_text())
    budget = (manifest.get("budgets") or {}).get(precision) or {}
    return budget_problems(measure_variant(session, manifest["decoder"], golden), budget)


def has_golden_data(artifacts: ModelArtifacts) -> bool:
    manifest = artifacts.manifest or {}
    if manifest.get("task") == "text-generation":
        return bool(manifest.get("decoder")) and (artifacts.root / _golden_file(manifest)).is_file()
    reference = manifest.get("reference") or {}
    return all((artifacts.root / reference.get(key, f"reference/{key}.npz")).is_file() for key in ("inputs", "outputs"))


def measure_route(session: Session, artifacts: ModelArtifacts, precision: str) -> list:
    """Budget violations of the golden data served through ``session``; a run that fails is one."""
    measure = _generative_problems if (artifacts.manifest or {}).get("task") == "text-generation" else _encoder_problems
    try:
        return measure(session, artifacts, precision)
    except Exception as exc:  # noqa: BLE001 - a route that cannot run the golden inputs is not measured within budget
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [f"the golden inputs do not run on it ({type(exc).__name__}: {first[:300]})"]


def judge_route(provider: str, session: Session, artifacts: ModelArtifacts, allow_unmeasured: bool) -> RouteNote:
    """How the loaded route is measured, or :class:`ProviderUnavailable` with the figures when it may not serve."""
    variant = session.variant
    if artifacts.manifest is None or variant is None:
        return RouteNote(NOTHING_TO_MEASURE, "a plain model file (no bundle): nothing was measured, served as given")
    precision = session.precision
    where = f"{provider} on {variant.path.name} ({precision})"
    verdict = route_verdict(variant.routes, provider, variant.precision, precision)
    if verdict.status == WITHIN_BUDGET:
        return RouteNote(MEASURED_AT_EXPORT, f"route {where}: measured within budget at export")
    if verdict.status == OUT_OF_BUDGET:  # select_variant let it through: the operator allowed it
        return RouteNote(OUT_OF_BUDGET_ALLOWED,
                         f"route {where}: {verdict.describe()} at export; served because {ALLOW_UNMEASURED} is set")
    assert verdict.status == UNMEASURED
    if allow_unmeasured:
        return RouteNote(UNMEASURED_ALLOWED,
                         f"route {where}: unmeasured (export never ran it); served because {ALLOW_UNMEASURED} is set")
    if not has_golden_data(artifacts):
        return RouteNote(NOTHING_TO_MEASURE,
                         f"route {where}: the bundle carries no golden data to measure it with; served as given")
    problems = measure_route(session, artifacts, precision)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ProviderUnavailable(
            f"export never measured {where}; measured at load against the bundle's golden outputs: "
            f"{problems[0]}{more}: not served (set parameter {ALLOW_UNMEASURED}=true to serve it anyway)"
        )
    return RouteNote(MEASURED_AT_LOAD, f"route {where}: unmeasured at export, measured within budget at load")


def allow_unmeasured(parameters: Mapping[str, str]) -> bool:
    from portable_ep.backends.base import TRUE_VALUES

    return str(parameters.get(ALLOW_UNMEASURED, "")).strip().lower() in TRUE_VALUES
