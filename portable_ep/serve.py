"""``portable-ep serve``: run tritonserver on a model repository until Ctrl-C / SIGTERM.

serve owns its processes (docs/self-healing.md): tritonserver and its stubs are one process
group that dies with serve (parent-death signal) and is restarted when it dies; a model that
fails to load is reported with its reason and retried while the others serve.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional, Sequence

from portable_ep.console import make_console
from rich.markup import escape
from rich.table import Table

from portable_ep.heartbeat import DEFAULT_HEARTBEAT_DEADLINE_S, DEFAULT_PROGRESS_DEADLINE_S
from portable_ep.metrics_text import served_providers
from portable_ep.supervisor import DEFAULT_LOAD_RETRIES, short_reason
from portable_ep.triton_process import TritonServer

DEFAULT_STATUS_PORT = 8003


def describe_models(server: TritonServer) -> Table:
    providers = served_providers(server.metrics_text())
    table = Table(title="models")
    for column in ("model", "state", "provider", "precision", "runtime / reason"):
        table.add_column(column)
    for entry in server.repository_index():
        name = entry.get("name", "")
        info = providers.get(name)
        detail = info["description"] if info else short_reason(entry.get("reason", ""))
        table.add_row(name, entry.get("state", ""), info["provider"] if info else "-", info["precision"] if info else "-", escape(detail))
    return table


def start_openai_api(server: TritonServer, console, port: Optional[int], api_key: Optional[str],
                     max_body_bytes: Optional[int]):
    """The OpenAI-compatible API beside tritonserver when the repository has a model it serves, else None."""
    if not port:
        return None
    try:
        from portable_ep.openai_api.catalog import repository_has_api_models
    except ImportError as exc:  # an environment without the server extra (the images): Triton serves all the same
        console.print(f"portable-ep: warning: package missing for the OpenAI API ({exc.name}): "
                      "pip install 'portable-ep[server]'; the OpenAI API is not started")
        return None
    if not repository_has_api_models(server.model_repository):
        console.print("portable-ep: no generative or embedding model in the repository: the OpenAI API is not started")
        return None
    from portable_ep.openai_api.server import OpenAIFrontend, OpenAIServerError

    try:
        frontend = OpenAIFrontend(server.model_repository, server.grpc_url, host=server.host, port=port, api_key=api_key,
                                  max_body_bytes=max_body_bytes, log=console.print).start()
    except OpenAIServerError as exc:  # Triton's models serve all the same: the API is an addition, never a gate
        console.print(f"portable-ep: warning: {exc}; the OpenAI API is not started")
        return None
    console.print(f"portable-ep: OpenAI-compatible API at {frontend.url} (/chat/completions, /completions, /embeddings, "
                  f"/models){'; API key required' if api_key else ''}")
    return frontend


def serve(
    repository: str,
    *,
    host: str = "127.0.0.1",
    http_port: Optional[int] = 8000,
    grpc_port: Optional[int] = 8001,
    metrics_port: Optional[int] = 8002,
    status_port: Optional[int] = DEFAULT_STATUS_PORT,
    ready_models: Sequence[str] = (),
    tritonserver: Optional[str] = None,
    backend_directory: Optional[str] = None,
    quiet: bool = False,
    ready_timeout: float = 300.0,
    supervise: bool = True,
    heartbeat_deadline_s: float = DEFAULT_HEARTBEAT_DEADLINE_S,
    progress_deadline_s: float = DEFAULT_PROGRESS_DEADLINE_S,
    load_retries: int = DEFAULT_LOAD_RETRIES,
    openai_port: Optional[int] = 9000,
    openai_api_key: Optional[str] = None,
    openai_max_body_bytes: Optional[int] = None,
) -> int:
    console = make_console(stderr=True)
    server = TritonServer(
        repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        tritonserver=tritonserver,
        backend_directory=backend_directory,
        echo=None if quiet else sys.stderr,
        supervise=supervise,
        heartbeat_deadline_s=heartbeat_deadline_s,
        progress_deadline_s=progress_deadline_s,
        load_retries=load_retries,
        on_restart=lambda restarted: console.print(describe_models(restarted)),
    )
    stop = threading.Event()

    def request_stop(signum, _frame):
        console.print(f"portable-ep: {signal.Signals(signum).name} received, stopping tritonserver")
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    console.print(f"portable-ep: starting {server.installation.binary} on {repository}")
    with server:
        console.print(describe_models(server))
        unknown = sorted(set(ready_models) - {entry.get("name", "") for entry in server.repository_index()})
        if unknown:
            console.print(f"portable-ep: --ready-models names {', '.join(unknown)}, not in {repository}: "
                          "readiness on the status port stays false until they are")
        for model, reason in server.unavailable_models().items():
            console.print(f"portable-ep: model {model!r} is UNAVAILABLE: {escape(reason)}"
                          + ("; the others are served" if supervise else ""))
        status_url = _start_status(server, console, host, status_port, ready_models) if supervise else None
        frontend = start_openai_api(server, console, openai_port, openai_api_key, openai_max_body_bytes)
        console.print(
            f"portable-ep: ready -- HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}  "
            f"(log: {server.log_path}); Ctrl-C stops"
        )
        if supervise:
            console.print(
                "portable-ep: supervising: a model whose stub dies or stalls is reloaded (not ready meanwhile), a model "
                "that failed to load is retried, tritonserver is restarted if it dies. Readiness: "
                f"{server.http_url}/v2/health/ready is true when every model is READY"
                + (f"; {status_url}/v2/health/ready when "
                   f"{'at least ' + ', '.join(ready_models) + ' are' if ready_models else 'every model is'} READY "
                   "(and /metrics there: the supervisor's counts)" if status_url else "")
            )
        try:
            while not stop.wait(0.5):
                if server.gave_up:
                    console.print(f"portable-ep: {server.gave_up}")
                    server.stop()
                    return 1
                if not supervise and server.process.poll() is not None:
                    console.print(f"portable-ep: tritonserver exited with code {server.process.returncode}")
                    server.stop()  # its stubs too
                    return server.process.returncode or 1
        finally:
            if frontend is not None:
                frontend.stop()
        code = server.stop()
    console.print(f"portable-ep: tritonserver stopped (exit code {code})")
    return 0 if code in (0, None) else code


def _start_status(server: TritonServer, console, host: str, port: Optional[int], ready_models: Sequence[str]):
    if not port:
        return None
    from portable_ep.serve_status import ServeStatus, start_status_server

    try:
        start_status_server(ServeStatus(server, ready_models), host, port)
    except OSError as exc:
        console.print(f"portable-ep: warning: status port {host}:{port} unavailable ({exc}); "
                      "pass --status-port with a free port (0: none)")
        return None
    return f"{host}:{port}"
