"""Measure a variant against the golden outputs, run by the provider that serves it.

ONNX variants run on the ``cpu`` provider (ONNX Runtime), IR variants on the
``openvino`` provider (fp32 inference precision pinned), so the accuracy in the
manifest is the accuracy a served request gets.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Mapping, Sequence, Tuple

import numpy as np

from portable_ep.backends.artifacts import ModelArtifacts, Variant
from portable_ep.backends.base import LoadRequest, Session
from portable_ep.backends.routes import ROUTE_OF_FORMAT
from portable_ep.exporters.accuracy import compare_outputs
from portable_ep.exporters.samples import Feeds, run_samples

RUNTIME_OF_FORMAT = ROUTE_OF_FORMAT


@contextmanager
def variant_session(root: Path, fmt: str, precision: str, file: Path, provider: str = "") -> Iterator[Session]:
    """The variant loaded by ``provider`` (default: the one that serves its format), closed on exit."""
    from portable_ep.backends.registry import default_registry
    from portable_ep.exporters.worker import PROVIDER_TOOLS, phase

    name = provider or RUNTIME_OF_FORMAT[fmt]
    provider = default_registry().get(name)
    artifacts = ModelArtifacts(root=root, variants=(Variant(fmt, precision, file),))
    tool = PROVIDER_TOOLS.get(name, name)
    phase(tool, f"creating the {precision} session")
    session = provider.load(LoadRequest(artifacts=artifacts, precision=precision))
    phase(tool, f"running the {precision} session")
    try:
        yield session
    finally:
        session.close()


def run_variant(root: Path, fmt: str, precision: str, file: Path, feeds: Feeds, batched: bool = True,
                batch: int = 8, provider: str = "") -> Dict[str, np.ndarray]:
    """Every sample of ``feeds`` (in the layout of exporters/samples.py) through ``provider`` (default: ``fmt``'s)."""
    with variant_session(root, fmt, precision, file, provider) as session:
        return run_samples(session.run, feeds, batched, batch)


def measure(
    root: Path, fmt: str, precision: str, file: Path, feeds: Feeds, golden: Mapping[str, np.ndarray],
    budget: Mapping[str, float], logits_outputs: Sequence[str], batched: bool = True, provider: str = "",
    sorted_outputs: Sequence[str] = (),
) -> Tuple[dict, list]:
    """(the manifest's ``accuracy`` entry, [budget violation lines]) of ``file`` run by ``provider`` (default: ``fmt``'s)."""
    provider = provider or RUNTIME_OF_FORMAT[fmt]
    outputs = run_variant(root, fmt, precision, file, feeds, batched, provider=provider)
    results, problems = compare_outputs(golden, outputs, budget, precision, logits_outputs, sorted_outputs)
    entry = {
        "runtime": f"{provider} provider",
        "outputs": {name: acc.as_dict() for name, acc in results.items()},
    }
    return entry, problems
