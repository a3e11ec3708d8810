"""Run a tritonserver process: free loopback ports, readiness, log capture, clean shutdown."""
from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, List, Optional, Sequence

from portable_ep.python_backend.install import install_backend_directory
from portable_ep.triton_install import TritonInstallation, find_triton


class TritonServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver child process serving ``model_repository`` with the portable_ep backend.

    Use as a context manager, or call ``start()`` / ``stop()``. Its combined output is
    written to ``log_path`` (and to ``echo``, if given).
    """

    def __init__(
        self,
        model_repository,
        *,
        host: str = "127.0.0.1",
        http_port: Optional[int] = None,
        grpc_port: Optional[int] = None,
        metrics_port: Optional[int] = None,
        backend_directory=None,
        tritonserver: Optional[str] = None,
        log_path=None,
        echo: Optional[IO[str]] = None,
        extra_args: Sequence[str] = (),
        supervise: bool = False,
    ):
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {model_repository} does not exist")
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.installation: TritonInstallation = find_triton(tritonserver)
        self._workdir = tempfile.TemporaryDirectory(prefix="portable-ep-")
        self.backend_directory = Path(backend_directory).resolve() if backend_directory else Path(self._workdir.name) / "backends"
        if backend_directory is None:
            install_backend_directory(self.backend_directory, self.installation)
        self.log_path = Path(log_path) if log_path else Path(self._workdir.name) / "tritonserver.log"
        self.echo = echo
        self.extra_args = list(extra_args)
        #: Reload a model whose python stub died, readiness false meanwhile (portable_ep.supervisor);
        #: needs explicit model control, so every model in the repository is loaded by name.
        self.supervise = supervise
        self.supervisor = None
        if supervise:
            self.extra_args = ["--model-control-mode=explicit", "--load-model=*", *self.extra_args]
        self.process: Optional[subprocess.Popen] = None
        self._log_thread: Optional[threading.Thread] = None

    # -- addresses -------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> List[str]:
        return [
            str(self.installation.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_directory}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            *self.extra_args,
        ]

    # -- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "TritonServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.installation.environment(),
            # Python stubs put their working directory on sys.path; a checkout's
            # portable_ep/ folder there would shadow the installed package.
            cwd=self._workdir.name,
            text=True,
            bufsize=1,
        )
        self._log_thread = threading.Thread(target=self._pump_log, daemon=True)
        self._log_thread.start()
        self.wait_ready(timeout)
        if self.supervise:
            from portable_ep.supervisor import ModelSupervisor

            self.supervisor = ModelSupervisor(self.http_url, self.process.pid, log=self._log_line).start()
        return self

    def _log_line(self, line: str) -> None:
        """The supervisor's lines go where the server's output goes (echo) and into a log of their own."""
        with open(self.log_path.with_name("supervisor.log"), "a") as log:
            log.write(line + "\n")
        if self.echo is not None:
            self.echo.write(line + "\n")
            self.echo.flush()

    def _pump_log(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                if self.echo is not None:
                    self.echo.write(line)
                    self.echo.flush()

    def _get(self, path: str, port: Optional[int] = None, timeout: float = 2.0):
        url = f"http://{self.host}:{port or self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()

    def is_ready(self) -> bool:
        """Models ready (HTTP health) and the metrics endpoint up (it starts a little later)."""
        try:
            status, _ = self._get("/v2/health/ready")
            metrics_status, _ = self._get("/metrics", port=self.metrics_port)
            return status == 200 and metrics_status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log_thread.join(timeout=5)
                raise TritonServerError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready:\n{self.failure_summary()}"
                )
            if self.is_ready():
                return
            time.sleep(0.1)
        self.stop()
        raise TritonServerError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.failure_summary()}")

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.terminate()  # SIGTERM: Triton unloads models and exits gracefully
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
        return self.process.returncode

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._workdir.cleanup()

    # -- introspection -----------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def failure_summary(self) -> str:
        """Triton's 'failed to load' lines when there are any (they say why), else the log's tail."""
        failures = [line for line in self.log_text().splitlines() if "failed to load" in line]
        return "\n".join(failures) if failures else self.log_tail()

    def repository_index(self) -> list:
        """Each model's name, state and, when it failed to load, Triton's reason."""
        request = urllib.request.Request(f"http://{self.host}:{self.http_port}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()
