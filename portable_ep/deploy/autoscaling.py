"""The autoscaling signal: Triton's queue time per pod, as Prometheus records it and the HPA reads it.

Triton's own Kubernetes chart (deploy/k8s-onprem) scales on the average time a request waits in the
queue, derived from two counters every backend reports: ``nv_inference_queue_duration_us`` (total
queue time) and ``nv_inference_request_success`` (requests). Queue time, unlike CPU or GPU
utilisation, rises exactly when a replica is saturated, whatever the accelerator. The recording
rule below is rendered into the PrometheusRule and run unchanged by the Prometheus test; the
prometheus-adapter rule exposes it to the HPA as a per-pod custom metric.
"""
from __future__ import annotations

from typing import Dict, List

# The recorded series and the custom metric the HPA asks prometheus-adapter for (same name).
QUEUE_METRIC = "portable_ep_queue_time_us"
# rate() window: long enough for two scrapes at the ServiceMonitor's interval, short enough that
# the HPA sees a burst within a minute.
RATE_WINDOW = "30s"
SCRAPE_INTERVAL = "10s"
DEFAULT_QUEUE_TARGET_MS = 10.0


def queue_time_expr(window: str = RATE_WINDOW) -> str:
    """Mean queue time (µs) of the requests each pod finished in the window; 0 when idle.

    Summed over the pod's models first, so one busy model among idle ones still counts in full;
    clamp_min keeps an idle pod at 0 instead of NaN (0/0), so the HPA can scale it back down.
    """
    by = "sum by (namespace, pod) "
    return (f"{by}(rate(nv_inference_queue_duration_us[{window}])) / "
            f"clamp_min({by}(rate(nv_inference_request_success[{window}])), 1e-9)")


def recording_rules(window: str = RATE_WINDOW) -> List[Dict]:
    """Prometheus rule groups (the ``groups`` of a rules file or of a PrometheusRule's spec)."""
    return [{"name": "portable-ep.autoscaling",
             "rules": [{"record": QUEUE_METRIC, "expr": queue_time_expr(window)}]}]


def adapter_rule() -> Dict:
    """prometheus-adapter's custom-metrics rule: the recorded series as a pods metric of the same name."""
    return {
        "seriesQuery": f'{QUEUE_METRIC}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{QUEUE_METRIC}$", "as": QUEUE_METRIC},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }


def target_average_value(queue_target_ms: float) -> str:
    """The HPA's averageValue for the metric (µs), as a Kubernetes quantity string."""
    return str(int(round(queue_target_ms * 1000)))
