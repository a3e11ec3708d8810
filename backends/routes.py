"""Routes: which provider ran which variant file at which precision, and what export measured there.

A bundle's promise is that what serves a request was measured against the golden
outputs. A variant file alone is not enough to say that: OpenVINO reading
``model.onnx`` converts the graph with its own frontend and computes with its own
kernels, so an ONNX file that ONNX Runtime answers within budget can come out wrong
through OpenVINO (a segmentation model measured at mean cosine 0.78, a YOLO-family
detector at a max abs error of 818). So the unit that is measured and served is a
*route*: (provider, variant file, serving precision).

Export measures the route it builds each variant for (``ROUTE_OF_FORMAT``: ONNX files
on ONNX Runtime's CPU provider, IR files on OpenVINO) and records the verdict per
provider in the variant's ``routes`` table of manifest.json::

    "routes": {"cpu": {"within_budget": true}}
    "routes": {"cpu": {"within_budget": true},
               "openvino": {"within_budget": false, "problems": ["output 'logits' mean cosine 0.78 < 0.99999"]}}

Bundles written before the table existed get the same answer derived from the
variant's ``within_budget`` and its format. A route the table does not name is
*unmeasured*: the backend measures it against the golden data when the model loads
(and refuses it if it misses), or serves it only when the operator asked for
unmeasured routes by name (``allow_unmeasured``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from portable_ep.backends.cpu_features import detect_cpu_features

#: The provider export measures each format on (the one it builds the format for).
ROUTE_OF_FORMAT = {"onnx": "cpu", "openvino": "openvino"}

WITHIN_BUDGET = "within budget"
OUT_OF_BUDGET = "out of budget"
UNMEASURED = "unmeasured"

#: config.pbtxt parameter (and ``repo add --allow-unmeasured``) that serves routes export did not measure within budget.
ALLOW_UNMEASURED = "allow_unmeasured"


@dataclass(frozen=True)
class RouteVerdict:
    status: str  # WITHIN_BUDGET, OUT_OF_BUDGET or UNMEASURED
    problems: Tuple[str, ...] = field(default=())

    @property
    def within_budget(self) -> bool:
        return self.status == WITHIN_BUDGET

    def describe(self) -> str:
        if self.status == OUT_OF_BUDGET and self.problems:
            return f"{self.status} ({'; '.join(self.problems[:2])})"
        return self.status


def routes_of_entry(entry: Mapping) -> Dict[str, dict]:
    """A manifest variant's ``routes`` table; derived from ``within_budget`` for bundles written before it existed."""
    routes = entry.get("routes")
    if isinstance(routes, Mapping):
        return {str(name): dict(verdict) for name, verdict in routes.items() if isinstance(verdict, Mapping)}
    provider = ROUTE_OF_FORMAT.get(str(entry.get("format")))
    if provider is None or entry.get("within_budget") is None:
        return {}
    verdict = {"within_budget": bool(entry.get("within_budget"))}
    if entry.get("problems"):
        verdict["problems"] = list(entry["problems"])
    return {provider: verdict}


def route_entry(within_budget: bool, problems=(), requires_cpu: str = "") -> dict:
    """One provider's verdict as the manifest's ``routes`` table records it.

    ``requires_cpu`` names a CPU feature the measurement depended on (``vnni``: 8-bit int8
    weights, which saturate on a CPU without it); on a CPU without it the route is unmeasured.
    """
    entry: dict = {"within_budget": bool(within_budget)}
    if problems:
        entry["problems"] = [str(p) for p in problems]
    if requires_cpu:
        entry["requires_cpu"] = requires_cpu
    return entry


def cpu_lacks(feature: str) -> bool:
    """True when this CPU lacks a feature a route's measurement depended on (unknown features count as lacking)."""
    if feature == "vnni":
        return not detect_cpu_features().vnni
    return True


def route_verdict(routes: Mapping[str, Mapping], provider: str, stored_precision: str,
                  serving_precision: Optional[str] = None) -> RouteVerdict:
    """What export measured for ``provider`` on a variant stored in ``stored_precision``.

    A serving precision other than the stored one (bf16 computed on fp32 weights) is a
    route of its own that export never ran: unmeasured.
    """
    if serving_precision and serving_precision != stored_precision:
        return RouteVerdict(UNMEASURED)
    verdict = routes.get(provider)
    if verdict is None or (verdict.get("requires_cpu") and cpu_lacks(str(verdict["requires_cpu"]))):
        return RouteVerdict(UNMEASURED)
    if verdict.get("within_budget"):
        return RouteVerdict(WITHIN_BUDGET)
    return RouteVerdict(OUT_OF_BUDGET, tuple(str(p) for p in verdict.get("problems") or ()))
