"""``portable-ep serve``: run tritonserver on a model repository until Ctrl-C / SIGTERM."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

from portable_ep.console import make_console
from rich.markup import escape
from rich.table import Table

from portable_ep.metrics_text import served_providers
from portable_ep.triton_process import TritonServer


def describe_models(server: TritonServer) -> Table:
    providers = served_providers(server.metrics_text())
    table = Table(title="models")
    for column in ("model", "state", "provider", "precision", "runtime / reason"):
        table.add_column(column)
    for entry in server.repository_index():
        name = entry.get("name", "")
        info = providers.get(name)
        detail = info["description"] if info else entry.get("reason", "")
        table.add_row(name, entry.get("state", ""), info["provider"] if info else "-", info["precision"] if info else "-", escape(detail))
    return table


def start_openai_api(server: TritonServer, console, port: Optional[int], api_key: Optional[str],
                     max_body_bytes: Optional[int]):
    """The OpenAI-compatible API beside tritonserver when the repository has a model it serves, else None."""
    from portable_ep.openai_api.catalog import repository_has_api_models

    if not port:
        return None
    if not repository_has_api_models(server.model_repository):
        console.print("portable-ep: no generative or embedding model in the repository: the OpenAI API is not started")
        return None
    from portable_ep.openai_api.server import OpenAIFrontend

    frontend = OpenAIFrontend(server.model_repository, server.grpc_url, host=server.host, port=port, api_key=api_key,
                              max_body_bytes=max_body_bytes, log=console.print).start()
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
    tritonserver: Optional[str] = None,
    backend_directory: Optional[str] = None,
    quiet: bool = False,
    ready_timeout: float = 300.0,
    supervise: bool = True,
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
        frontend = start_openai_api(server, console, openai_port, openai_api_key, openai_max_body_bytes)
        console.print(
            f"portable-ep: ready -- HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}  "
            f"(log: {server.log_path}); Ctrl-C stops"
        )
        if supervise:
            console.print("portable-ep: supervising the models: a model whose stub dies is reloaded, not ready until it serves again")
        try:
            while not stop.wait(0.5):
                if server.process.poll() is not None:
                    console.print(f"portable-ep: tritonserver exited with code {server.process.returncode}")
                    return server.process.returncode or 1
        finally:
            if frontend is not None:
                frontend.stop()
        code = server.stop()
    console.print(f"portable-ep: tritonserver stopped (exit code {code})")
    return 0 if code in (0, None) else code
