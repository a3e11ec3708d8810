"""Run the OpenAI-compatible API in a thread of ``portable-ep serve`` (uvicorn), beside tritonserver."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

#: Connections uvicorn serves at once; beyond it, new requests get 503 (Triton's own limits apply below).
DEFAULT_CONCURRENCY = 512


class OpenAIServerError(RuntimeError):
    pass


class OpenAIFrontend:
    """uvicorn serving :func:`~portable_ep.openai_api.app.create_app` on ``host:port`` until :meth:`stop`."""

    def __init__(self, repository, grpc_url: str, *, host: str = "127.0.0.1", port: int = 9000,
                 api_key: Optional[str] = None, max_body_bytes: Optional[int] = None,
                 concurrency: int = DEFAULT_CONCURRENCY, log: Callable[[str], None] = lambda message: None):
        try:
            import uvicorn

            from portable_ep.openai_api.app import DEFAULT_MAX_BODY_BYTES, create_app
        except ImportError as exc:
            raise OpenAIServerError(f"package missing for the OpenAI API ({exc.name}): pip install 'portable-ep[server]' "
                                    "(or --openai-port 0 to serve without it)") from None
        app = create_app(repository, grpc_url, api_key=api_key, log=log,
                         max_body_bytes=DEFAULT_MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                limit_concurrency=concurrency, timeout_graceful_shutdown=5, lifespan="on")
        self._server = uvicorn.Server(config)
        self.host, self.port = host, port
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> "OpenAIFrontend":
        self._thread = threading.Thread(target=self._server.run, name="portable-ep-openai", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise OpenAIServerError(f"the OpenAI API could not start on {self.host}:{self.port} "
                                        "(port in use? choose another with --openai-port)")
            if time.monotonic() > deadline:
                raise OpenAIServerError(f"the OpenAI API did not start on {self.host}:{self.port} in {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "OpenAIFrontend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
