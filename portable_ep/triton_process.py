"""Run a tritonserver process: free loopback ports, readiness, log capture, clean shutdown.

With ``supervise=True`` (``portable-ep serve``) the server is also kept: a model that fails
to load is reported UNAVAILABLE with its reason while the others serve
(``--exit-on-error=false``), and a server that dies is restarted with backoff, its old
process group (the stubs it left) killed first (``portable_ep.process_tree``).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Callable, List, Optional, Sequence

from portable_ep.heartbeat import DEFAULT_HEARTBEAT_DEADLINE_S, DEFAULT_PROGRESS_DEADLINE_S, DIR_ENV
from portable_ep.process_tree import dying_with_parent, kill_group
from portable_ep.python_backend.install import install_backend_directory
from portable_ep.triton_install import TritonInstallation, find_triton

RESTARTS_ENV = "PORTABLE_EP_SERVER_RESTARTS"
RESTART_CAUSE_ENV = "PORTABLE_EP_SERVER_RESTART_CAUSE"
MAX_RESTART_BACKOFF_S = 30.0
MAX_QUICK_RESTARTS = 5  # restarts in a row, each dying within STABLE_AFTER_S: then serve gives up
STABLE_AFTER_S = 60.0
KEEPER_INTERVAL_S = 0.2


def describe_exit(returncode: Optional[int]) -> str:
    if returncode is None:
        return "is running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


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
        heartbeat_deadline_s: float = DEFAULT_HEARTBEAT_DEADLINE_S,
        progress_deadline_s: float = DEFAULT_PROGRESS_DEADLINE_S,
        load_retries: Optional[int] = None,
        on_restart: Optional[Callable[["TritonServer"], None]] = None,
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
        #: Reload a model whose python stub died or stalled, readiness false meanwhile
        #: (portable_ep.supervisor); needs explicit model control, so every model in the repository
        #: is loaded by name. A model that fails to load does not stop the server (it is reported
        #: and retried), and a server that dies is restarted.
        self.supervise = supervise
        self.supervisor = None
        self.supervisor_options = {"heartbeat_deadline_s": heartbeat_deadline_s, "progress_deadline_s": progress_deadline_s}
        if load_retries is not None:
            self.supervisor_options["load_retries"] = load_retries
        if supervise:
            self.extra_args = ["--model-control-mode=explicit", "--load-model=*", "--exit-on-error=false", *self.extra_args]
        self.heartbeat_dir = Path(self._workdir.name) / "heartbeats"
        self.process: Optional[subprocess.Popen] = None
        self._log_thread: Optional[threading.Thread] = None
        #: tritonserver restarts after it died (supervise only), and the last one's cause.
        self.restarts = 0
        self.last_restart_cause = ""
        self.gave_up: Optional[str] = None  # why the server is no longer restarted, once it is not
        self.restarting = False
        self.on_restart = on_restart
        self._closing = threading.Event()  # stop() began: no more restarts
        self._closed = threading.Event()  # stop() ended: the keeper, parent of the server, may exit
        self._lock = threading.RLock()
        self._keeper: Optional[threading.Thread] = None
        self._started_at = 0.0
        self._past_counters: dict = {}  # the supervisors of servers that died

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
        self._spawn(log_mode="w")
        self.wait_ready(timeout)
        if self.supervise:
            self._start_supervisor()
            # The keeper starts every later server: it must outlive each (parent-death signal).
            self._keeper = threading.Thread(target=self._keep, name="portable-ep-keeper", daemon=True)
            self._keeper.start()
        return self

    def _environment(self) -> dict:
        env = self.installation.environment()
        self.heartbeat_dir.mkdir(parents=True, exist_ok=True)
        env[DIR_ENV] = str(self.heartbeat_dir)
        if self.restarts:
            env[RESTARTS_ENV] = str(self.restarts)
            env[RESTART_CAUSE_ENV] = self.last_restart_cause
        return env

    def _spawn(self, log_mode: str) -> None:
        self.process = subprocess.Popen(
            dying_with_parent(self.command()),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            # Python stubs put their working directory on sys.path; a checkout's
            # portable_ep/ folder there would shadow the installed package.
            cwd=self._workdir.name,
            text=True,
            bufsize=1,
            # Its own process group, shared by its stubs: stop() and a restart kill them all.
            start_new_session=True,
        )
        self._started_at = time.monotonic()
        self._log_thread = threading.Thread(target=self._pump_log, args=(self.process, log_mode), daemon=True)
        self._log_thread.start()

    def _start_supervisor(self) -> None:
        from portable_ep.supervisor import ModelSupervisor

        self.supervisor = ModelSupervisor(self.http_url, self.process.pid, log=self._log_line,
                                          heartbeat_dir=self.heartbeat_dir, **self.supervisor_options).start()

    # -- keeping the server --------------------------------------------------------------
    def _keep(self) -> None:
        """Restart the server when it dies, until stop(); then wait for stop() to finish."""
        quick, backoff = 0, 1.0
        while not self._closing.wait(KEEPER_INTERVAL_S):
            process = self.process
            if process is None or process.poll() is None:
                continue
            with self._lock:
                if self._closing.is_set():
                    break
                lived = time.monotonic() - self._started_at
                if lived >= STABLE_AFTER_S:
                    quick, backoff = 0, 1.0
                quick += 1
                cause = f"tritonserver (pid {process.pid}) {describe_exit(process.returncode)}"
                if quick > MAX_QUICK_RESTARTS:
                    self.gave_up = (f"{cause} after {MAX_QUICK_RESTARTS} restarts in a row, each lasting less than "
                                    f"{STABLE_AFTER_S:.0f} s; not restarting it again (log: {self.log_path})")
                    self._log_line(f"portable-ep: {self.gave_up}")
                    break
                self.restarting = True
                self.restarts += 1
                self.last_restart_cause = f"{cause} after {lived:.0f} s"
                self._log_line(f"portable-ep: {cause}; killing what it left (its stubs) and restarting it in "
                               f"{backoff:.0f} s (server restart {self.restarts})")
                self._restart(backoff)
                backoff = min(backoff * 2, MAX_RESTART_BACKOFF_S)
        self._closed.wait()

    def supervisor_counters(self) -> dict:
        """Per model: stub restarts, stalls and failed loads the supervisors counted, across server restarts."""
        merged = {model: dict(counts) for model, counts in self._past_counters.items()}
        supervisor = self.supervisor
        for model, counts in (dict(supervisor.counters) if supervisor is not None else {}).items():
            into = merged.setdefault(model, {})
            for key, value in counts.items():
                into[key] = into.get(key, 0) + value
        return merged

    def _restart(self, delay_s: float) -> None:
        old = self.process
        if self.supervisor is not None:
            self.supervisor.stop()
            self._past_counters = self.supervisor_counters()
            self.supervisor = None
        killed = kill_group(old.pid)
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
        if self._closing.wait(delay_s):
            return
        try:
            self._spawn(log_mode="a")
            self.wait_ready(timeout=300.0, stop_on_timeout=False)
            self._start_supervisor()
        except Exception as exc:  # noqa: BLE001 - killed: the keeper sees it dead and tries again, later
            if not self._closing.is_set():
                self._log_line(f"portable-ep: restarted tritonserver is not serving ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}); killing it to try again")
                kill_group(self.process.pid)
            return
        finally:
            self.restarting = False
        left = [pid for pid in killed if pid != old.pid]
        self._log_line(f"portable-ep: tritonserver restarted (pid {self.process.pid}, server restart {self.restarts}); "
                       f"{len(left)} stub process(es) of the old one killed")
        if self.on_restart is not None:
            try:  # a report that fails (the new server slow to answer) must not end the keeper's watch
                self.on_restart(self)
            except Exception as exc:  # noqa: BLE001
                self._log_line(f"portable-ep: after the restart: {type(exc).__name__}: {exc}")

    def _log_line(self, line: str) -> None:
        """The supervisor's lines go where the server's output goes (echo) and into a log of their own."""
        with open(self.log_path.with_name("supervisor.log"), "a") as log:
            log.write(line + "\n")
        if self.echo is not None:
            self.echo.write(line + "\n")
            self.echo.flush()

    def _pump_log(self, process: subprocess.Popen, mode: str = "w") -> None:
        with open(self.log_path, mode) as log:
            for line in process.stdout:
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

    def is_started(self) -> bool:
        """Up, every model's first load over (READY or UNAVAILABLE with its reason), metrics up.

        With ``--exit-on-error=false`` a model that failed to load keeps Triton's strict readiness
        false for good: the server is started all the same, and serves the others.
        """
        try:
            status, _ = self._get("/v2/health/live")
            metrics_status, _ = self._get("/metrics", port=self.metrics_port)
            if status != 200 or metrics_status != 200:
                return False
            return all(entry.get("state") not in ("LOADING", "UNLOADING") for entry in self.repository_index())
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 120.0, stop_on_timeout: bool = True) -> None:
        deadline = time.monotonic() + timeout
        started = self.is_started if self.supervise else self.is_ready
        while time.monotonic() < deadline and not self._closing.is_set():
            if self.process.poll() is not None:
                self._log_thread.join(timeout=5)
                raise TritonServerError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready:\n{self.failure_summary()}"
                )
            if started():
                return
            time.sleep(0.1)
        if self._closing.is_set():
            raise TritonServerError("stopped while tritonserver was starting")
        if stop_on_timeout:
            self.stop()
        raise TritonServerError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.failure_summary()}")

    def unavailable_models(self) -> dict:
        """Models that failed to load, with Triton's reason (its traceback cut)."""
        from portable_ep.supervisor import short_reason

        return {entry.get("name", ""): short_reason(entry.get("reason", "")) for entry in self.repository_index()
                if entry.get("state") == "UNAVAILABLE" and entry.get("reason") not in (None, "", "unloaded")}

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        self._closing.set()
        try:
            with self._lock:  # a restart in progress finishes (or gives up) first
                if self.supervisor is not None:
                    self.supervisor.stop()
                    self.supervisor = None
                if self.process is None:
                    return None
                if self.process.poll() is None:
                    self.process.terminate()  # SIGTERM: Triton unloads models and exits gracefully
                    try:
                        self.process.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        self.process.kill()
                        self.process.wait()
                kill_group(self.process.pid, timeout_s=2.0)  # any stub it did not stop
                if self._log_thread is not None:
                    self._log_thread.join(timeout=5)
                return self.process.returncode
        finally:
            self._closed.set()
            if self._keeper is not None and self._keeper is not threading.current_thread():
                self._keeper.join(timeout=5)

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
