"""portable-ep's metrics on Triton's /metrics endpoint (pb_utils.MetricFamily).

- ``portable_ep_model_info``: 1 for the provider, precision and runtime a model serves on;
- ``portable_ep_provider_skipped``: 1 for each provider the chain skipped, with the reason;
- ``portable_ep_requests_total`` / ``portable_ep_request_errors_total`` /
  ``portable_ep_executions_total`` / ``portable_ep_provider_seconds_total`` per provider.
``requests_total / executions_total`` is the mean number of requests per batch.
"""
from __future__ import annotations

from portable_ep.backends.chain import ChainResolution

_REASON_LABEL_LIMIT = 200  # Prometheus labels are fine with this; whole messages are in the log


class BackendMetrics:
    def __init__(self, pb_utils, model: str, version: str, resolution: ChainResolution, precision: str):
        family = pb_utils.MetricFamily
        labels = {"model": model, "version": str(version), "provider": resolution.provider}
        # Keep every family and metric referenced: Triton drops a metric once its object is collected.
        self._families = {
            "info": family("portable_ep_model_info", "Provider and precision a model serves on (always 1)", family.GAUGE),
            "skipped": family("portable_ep_provider_skipped", "Providers the chain skipped, with the reason (always 1)", family.GAUGE),
            "requests": family("portable_ep_requests_total", "Requests answered by the portable_ep backend", family.COUNTER),
            "errors": family("portable_ep_request_errors_total", "Requests answered with an error", family.COUNTER),
            "executions": family("portable_ep_executions_total", "execute() calls (batches) handled", family.COUNTER),
            "seconds": family("portable_ep_provider_seconds_total", "Seconds spent in execute() batching and provider calls", family.COUNTER),
        }
        self._info = self._families["info"].Metric(
            labels={**labels, "precision": precision, "description": resolution.session.description}
        )
        self._info.set(1)
        self._skipped = []
        for skipped in resolution.skipped:
            metric = self._families["skipped"].Metric(
                labels={**labels, "skipped_provider": skipped.name, "reason": skipped.reason[:_REASON_LABEL_LIMIT]}
            )
            metric.set(1)
            self._skipped.append(metric)
        self._requests = self._families["requests"].Metric(labels=labels)
        self._errors = self._families["errors"].Metric(labels=labels)
        self._executions = self._families["executions"].Metric(labels=labels)
        self._seconds = self._families["seconds"].Metric(labels=labels)

    def record_execution(self, requests: int, errors: int, seconds: float) -> None:
        self._requests.increment(requests)
        if errors:
            self._errors.increment(errors)
        self._executions.increment(1)
        self._seconds.increment(seconds)
