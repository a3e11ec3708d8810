"""portable-ep's metrics on Triton's /metrics endpoint (pb_utils.MetricFamily).

- ``portable_ep_model_info``: 1 for the provider, precision and runtime a model serves on;
- ``portable_ep_provider_skipped``: 1 for each provider the chain skipped, with the reason
  (the fallback, and why);
- ``portable_ep_model_restarts_total``: how often the supervisor reloaded the model after its
  stub died or stalled (``portable-ep serve`` / ``supervise``), with ``portable_ep_model_last_restart_info``
  naming the cause (signal, exit code, or the stall); ``portable_ep_model_stalls_total`` counts
  the stalls among them;
- ``portable_ep_server_restarts``: how often ``portable-ep serve`` restarted tritonserver after it
  died (the same value on every model; a new server starts the count where the old one stopped),
  with ``portable_ep_server_last_restart_info`` naming the cause;
- ``portable_ep_requests_total`` / ``portable_ep_request_errors_total`` /
  ``portable_ep_executions_total`` / ``portable_ep_provider_seconds_total`` per provider.
- ``portable_ep_provider_calls_total`` / ``portable_ep_padded_calls_total``: runtime calls
  made, and those that padded requests of different lengths into one (mixed lengths).
``requests_total / executions_total`` is the mean number of requests per batch.

Each ``Metric.increment`` is a round trip from the stub to the server process
(~25 us measured), and four of them per ``execute()`` were most of the backend's
latency over Triton's bare python backend. So ``execute()`` only adds to local
counters and a background thread publishes them every ``FLUSH_INTERVAL_S``: the
counters on /metrics lag by at most that long.
"""
from __future__ import annotations

import threading

from portable_ep.backends.chain import ChainResolution

_REASON_LABEL_LIMIT = 200  # Prometheus labels are fine with this; whole messages are in the log
FLUSH_INTERVAL_S = 0.2


class _Counters:
    __slots__ = ("requests", "errors", "executions", "seconds", "calls", "padded")

    def __init__(self):
        self.requests = self.errors = self.executions = self.calls = self.padded = 0
        self.seconds = 0.0

    def any(self) -> bool:
        return bool(self.executions)


class BackendMetrics:
    def __init__(self, pb_utils, model: str, version: str, resolution: ChainResolution, precision: str,
                 flush_interval_s: float = FLUSH_INTERVAL_S, restarts: int = 0, restart_cause: str = "",
                 stalls: int = 0, server_restarts: int = 0, server_restart_cause: str = ""):
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
            "calls": family("portable_ep_provider_calls_total", "Runtime calls made (a batch of one shape is one call)", family.COUNTER),
            "padded": family("portable_ep_padded_calls_total", "Runtime calls that padded requests of different lengths together", family.COUNTER),
            "restarts": family("portable_ep_model_restarts_total", "Reloads after the model's stub process died", family.COUNTER),
            "last_restart": family("portable_ep_model_last_restart_info", "Why the model's stub last died (always 1)", family.GAUGE),
            "stalls": family("portable_ep_model_stalls_total", "Reloads after the model's stub stalled (no heartbeat or no progress)", family.COUNTER),
            # Gauges: every model publishes the same value, and stubs share a metric of the same labels.
            "server_restarts": family("portable_ep_server_restarts", "tritonserver restarts by portable-ep serve after it died", family.GAUGE),
            "server_last_restart": family("portable_ep_server_last_restart_info", "Why tritonserver last died (always 1)", family.GAUGE),
        }
        session = resolution.session
        self._info = self._families["info"].Metric(
            labels={
                **labels,
                "precision": precision,
                # Where the provider really runs, e.g. "cuda:0" or "npu (emulated)".
                "device": str(getattr(session, "device", "") or ""),
                "description": session.description,
                # How the route serving it was measured (python_backend/route_check.py), e.g. "measured-at-export".
                "route": getattr(resolution.note, "label", "") or "",
            }
        )
        self._info.set(1)
        self._skipped = []
        for skipped in resolution.skipped:
            metric = self._families["skipped"].Metric(
                labels={**labels, "skipped_provider": skipped.name, "reason": skipped.reason[:_REASON_LABEL_LIMIT]}
            )
            metric.set(1)
            self._skipped.append(metric)
        base = {"model": model, "version": str(version)}
        self._restarts = self._families["restarts"].Metric(labels=base)
        if restarts:
            self._restarts.increment(restarts)
            self._last_restart = self._families["last_restart"].Metric(labels={**base, "cause": restart_cause[:_REASON_LABEL_LIMIT]})
            self._last_restart.set(1)
        self._stalls = self._families["stalls"].Metric(labels=base)
        if stalls:
            self._stalls.increment(stalls)
        if server_restarts:  # absent while there was none: a 0 from one stub must not hide another's count
            self._server_restarts = self._families["server_restarts"].Metric(labels={})
            self._server_restarts.set(server_restarts)
            self._server_last_restart = self._families["server_last_restart"].Metric(
                labels={"cause": server_restart_cause[:_REASON_LABEL_LIMIT]})
            self._server_last_restart.set(1)
        self._requests = self._families["requests"].Metric(labels=labels)
        self._errors = self._families["errors"].Metric(labels=labels)
        self._executions = self._families["executions"].Metric(labels=labels)
        self._seconds = self._families["seconds"].Metric(labels=labels)
        self._calls = self._families["calls"].Metric(labels=labels)
        self._padded = self._families["padded"].Metric(labels=labels)

        self._pending = _Counters()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = flush_interval_s
        self._flusher = threading.Thread(target=self._flush_periodically, name="portable_ep-metrics", daemon=True)
        self._flusher.start()

    def record_execution(self, requests: int, errors: int, seconds: float, calls: int = 0, padded: int = 0) -> None:
        with self._lock:
            pending = self._pending
            pending.requests += requests
            pending.errors += errors
            pending.executions += 1
            pending.seconds += seconds
            pending.calls += calls
            pending.padded += padded

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, _Counters()
        if not pending.any():
            return
        self._requests.increment(pending.requests)
        if pending.errors:
            self._errors.increment(pending.errors)
        self._executions.increment(pending.executions)
        self._seconds.increment(pending.seconds)
        if pending.calls:
            self._calls.increment(pending.calls)
        if pending.padded:
            self._padded.increment(pending.padded)

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - metrics must never take the model down
                pass

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=2 * self._interval + 1)
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - the server may already be tearing the metrics down
            pass
        self.release()

    def release(self) -> None:
        """Remove this instance's series from Triton's /metrics now.

        Triton drops a custom metric when the stub's object for it is collected; a stub that
        exits holding them leaves the series behind, so after a reload with another precision
        ``portable_ep_model_info`` showed both the old series and the new one (and ``check``
        could read the wrong precision). Dropping every reference while the stub still talks
        to the server deletes them; a reloaded model's new instance has published its own.
        """
        import gc

        for name in ("_info", "_skipped", "_restarts", "_last_restart", "_requests", "_errors", "_executions",
                     "_seconds", "_calls", "_padded"):
            if hasattr(self, name):
                delattr(self, name)
        self._families = {}
        gc.collect()
