"""``portable-ep serve``'s own status port: readiness for "at least these models", and the supervisor's counts.

Triton's ``/v2/health/ready`` (strict readiness) is true only when every model Triton was
asked to load is READY: a model that failed to load keeps it false for good, and Triton
has no setting for "ready when at least these models are" (an unload does not clear a
failed load). ``serve`` answers that question itself, on ``--status-port``:

- ``GET /v2/health/ready``: 200 when tritonserver runs (not being restarted) and every
  model of ``--ready-models`` (default: every model of the repository) is READY, else 503;
  the JSON body names each model's state and, for one that failed to load, the reason;
- ``GET /v2/health/live``: 200 while serve keeps a server (503 once it gave up restarting it);
- ``GET /metrics``: what the supervisor counted, in Prometheus' text format. A model that
  never loaded has no stub to publish metrics on Triton's port, so its failed loads are
  counted here: ``portable_ep_supervisor_load_failures_total``, ``..._stub_restarts_total``,
  ``..._stalls_total`` per model, ``portable_ep_server_restarts_total`` and
  ``portable_ep_model_ready`` (1/0, label ``required``).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Sequence


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class ServeStatus:
    """The verdicts, computed from the kept ``TritonServer`` at each request."""

    def __init__(self, server, ready_models: Sequence[str] = ()):
        self.server = server
        self.ready_models: List[str] = list(ready_models)

    def models(self) -> Dict[str, dict]:
        from portable_ep.supervisor import short_reason

        try:
            index = self.server.repository_index()
        except Exception:  # noqa: BLE001 - a server down or restarting: nothing is ready
            return {}
        return {entry.get("name", ""): {"state": entry.get("state") or "NOT LOADED",
                                        **({"reason": short_reason(entry["reason"])} if entry.get("reason") else {})}
                for entry in index}

    def ready(self) -> dict:
        models = self.models()
        required = self.ready_models or sorted(models)
        server = self.server
        running = server.process is not None and server.process.poll() is None and not server.restarting
        missing = [name for name in required if models.get(name, {}).get("state") != "READY"]
        reason = ("tritonserver is not running (being restarted)" if not running
                  else f"not ready: {', '.join(missing)}" if missing
                  else "no model in the repository" if not required else "")
        return {"ready": running and not missing and bool(required), "reason": reason,
                "required": required if self.ready_models else "every model of the repository",
                "models": models, "server_restarts": server.restarts}

    def live(self) -> dict:
        return {"live": self.server.gave_up is None, "reason": self.server.gave_up or ""}

    def metrics(self) -> str:
        server = self.server
        counters = server.supervisor_counters()
        models = self.models()
        lines = ["# HELP portable_ep_server_restarts_total tritonserver restarts by portable-ep serve after it died",
                 "# TYPE portable_ep_server_restarts_total counter",
                 f"portable_ep_server_restarts_total {server.restarts}"]
        for name, help_text, key in (
                ("portable_ep_supervisor_load_failures_total", "Failed loads of a model (first load and retries)", "load_failures"),
                ("portable_ep_supervisor_stub_restarts_total", "Reloads of a model after its stub died or stalled", "restarts"),
                ("portable_ep_supervisor_stalls_total", "Stubs killed because they stalled", "stalls")):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            lines += [f'{name}{{model="{_escape(model)}"}} {counts.get(key, 0)}' for model, counts in sorted(counters.items())]
        required = set(self.ready_models or models)
        lines += ["# HELP portable_ep_model_ready 1 when the model is READY; required: counted by /v2/health/ready here",
                  "# TYPE portable_ep_model_ready gauge"]
        lines += [f'portable_ep_model_ready{{model="{_escape(model)}",required="{str(model in required).lower()}"}} '
                  f'{int(info["state"] == "READY")}' for model, info in sorted(models.items())]
        return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    status: ServeStatus  # set on the subclass made per server

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v2/health/ready":
            verdict = self.status.ready()
            self._send(200 if verdict["ready"] else 503, json.dumps(verdict, indent=1), "application/json")
        elif path == "/v2/health/live":
            verdict = self.status.live()
            self._send(200 if verdict["live"] else 503, json.dumps(verdict), "application/json")
        elif path == "/metrics":
            self._send(200, self.status.metrics(), "text/plain; version=0.0.4")
        else:
            self._send(404, json.dumps({"error": f"unknown path {path!r}: /v2/health/ready, /v2/health/live, /metrics"}),
                       "application/json")

    def _send(self, code: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # probes every few seconds: not worth a log line each
        pass


def start_status_server(status: ServeStatus, host: str, port: int) -> Optional[ThreadingHTTPServer]:
    """The status port, served on a daemon thread; raises OSError when the port is taken."""
    handler = type("StatusHandler", (_Handler,), {"status": status})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="portable-ep-status", daemon=True).start()
    return httpd
