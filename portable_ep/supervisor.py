"""Bring a model back when its python stub dies, and keep readiness truthful meanwhile.

Triton 2.51 never restarts a python stub that was killed (an OOM kill, a driver
segfault): every request then fails with "Stub process '<model>_0' is not healthy" while
``/v2/health/ready`` and the model's readiness stay true (FACTS.md). So a supervisor
watches the server's stub processes:

- **detect**: each stub is a child of tritonserver whose command line names its
  ``<repository>/<model>/<version>/model.py``. Triton does not reap a dead stub, so it
  stays a zombie and ``/proc/<pid>/stat`` still holds its wait status (killed by which
  signal, or which exit code): the cause of death;
- **tell the truth**: the model is unloaded at once (explicit model control). An unloaded
  model is not ready, and with Triton's default strict readiness neither is
  ``/v2/health/ready``: probes, HEALTHCHECKs and load balancers stop sending traffic;
- **recover**: the model is loaded again with its own configuration plus two parameters,
  ``restart_count`` and ``restart_cause``, which the backend logs and publishes as
  ``portable_ep_model_restarts_total`` on ``/metrics``. A load that fails is retried
  with backoff, the model staying not ready until one succeeds.

``portable-ep serve`` runs tritonserver with ``--model-control-mode=explicit
--load-model=*`` and this supervisor. A Triton started elsewhere gets the same from
``portable-ep supervise --url HOST:HTTP_PORT`` run on the same host (or in the same pid
namespace, e.g. a Kubernetes sidecar with ``shareProcessNamespace: true``); that server
must use ``--model-control-mode=explicit``.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

STUB_BINARY = "triton_python_backend_stub"
RESTART_COUNT = "restart_count"
RESTART_CAUSE = "restart_cause"
POLL_INTERVAL_S = 0.2
MAX_BACKOFF_S = 30.0
UNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class StubProcess:
    pid: int
    model: str
    instance: str
    state: str  # /proc state letter: R, S, D, Z (zombie: dead, not reaped), ...
    wait_status: Optional[int] = None  # waitpid-style status, for a zombie

    @property
    def dead(self) -> bool:
        return self.state in ("Z", "X", "x")


def describe_wait_status(status: Optional[int]) -> str:
    """``killed by SIGKILL`` / ``exited with code 1`` from a waitpid status."""
    if status is None:
        return "exited (status unknown: the process was already reaped)"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"stopped (status {status})"


def _read_stat(pid: int):
    """(state, parent pid, wait status) from /proc/<pid>/stat; fields after the command's ')'."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); field 52 (exit_code, Linux >= 3.5) is fields[49].
    status = int(fields[49]) if len(fields) > 49 else None
    return fields[0], int(fields[1]), status


def find_stubs(server_pid: int, proc: Path = Path("/proc")) -> Dict[int, StubProcess]:
    """The python stubs tritonserver ``server_pid`` started; zombies (dead children) included.

    A zombie has no command line left, so it is listed without model and instance: the
    supervisor names it from when it last saw that pid alive.
    """
    stubs = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            state, parent, status = _read_stat(pid)
            if parent != server_pid:
                continue
            if state in ("Z", "X"):
                stubs[pid] = StubProcess(pid, "", "", state, status)
                continue
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except (OSError, ValueError, IndexError):
            continue  # exited between listing and reading
        if argv and argv[0].endswith(STUB_BINARY) and len(argv) > 1:
            # argv: stub, <repository>/<model>/<version>/model.py, shm region, ..., instance name at [8]
            model = Path(argv[1]).parent.parent.name
            stubs[pid] = StubProcess(pid, model, argv[8] if len(argv) > 8 else model, state)
    return stubs


@dataclass
class RestartEvent:
    model: str
    instance: str
    cause: str
    died_at: float  # time.monotonic() when the death was seen
    ready_after_s: Optional[float] = None  # None until the model serves again
    count: int = 0
    error: str = ""


@dataclass
class _Known:
    alive: Dict[int, StubProcess] = field(default_factory=dict)  # pid -> the stub as last seen alive
    handled: Set[int] = field(default_factory=set)


class ModelSupervisor:
    """Watches one tritonserver's stubs and reloads a model whose stub died (see the module doc)."""

    def __init__(self, http_url: str, server_pid: int, log: Callable[[str], None] = print,
                 interval_s: float = POLL_INTERVAL_S):
        import tritonclient.http as httpclient

        self.server_pid = server_pid
        self.log = log
        self.interval_s = interval_s
        self._client = httpclient.InferenceServerClient(http_url, connection_timeout=10, network_timeout=300)
        self._known = _Known()
        self._pending: Dict[str, StubProcess] = {}  # model -> its dead stub, until the model is reloaded
        self.events: List[RestartEvent] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "ModelSupervisor":
        self.poll()  # learn the live stubs before any can die unseen
        self._thread = threading.Thread(target=self._run, name="portable-ep-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any one failure
                self.log(f"portable-ep supervisor: {type(exc).__name__}: {exc}")

    # -- detection -------------------------------------------------------------------
    def poll(self) -> List[RestartEvent]:
        """One look at the stubs; restart the models whose stub died since the last look.

        A death stays pending until its model is reloaded: a restart that fails half-way
        (the server busy, a timeout) is tried again at the next look, never forgotten.
        """
        if not Path(f"/proc/{self.server_pid}").exists():
            return []
        stubs = find_stubs(self.server_pid)
        known = self._known
        for pid, stub in stubs.items():
            if pid in known.handled:
                continue
            if not stub.dead:
                known.alive[pid] = stub
                continue
            known.handled.add(pid)
            seen = known.alive.pop(pid, None)
            if seen is not None:  # a zombie's cmdline is gone: name it from when it was alive
                self._pending.setdefault(seen.model, StubProcess(pid, seen.model, seen.instance, stub.state, stub.wait_status))
        for pid in [pid for pid in known.alive if pid not in stubs]:
            seen = known.alive.pop(pid)  # reaped by someone: dead, cause unknown
            known.handled.add(pid)
            self._pending.setdefault(seen.model, StubProcess(pid, seen.model, seen.instance, "X", None))
        events = []
        for model, stub in list(self._pending.items()):
            try:
                events.append(self.restart(stub))
            except Exception as exc:  # noqa: BLE001 - kept pending: tried again at the next look
                self.log(f"portable-ep supervisor: model {model!r}: restart failed ({type(exc).__name__}: {exc}); trying again")
                continue
            del self._pending[model]
        return events

    # -- recovery --------------------------------------------------------------------
    def _loaded_models(self) -> Dict[str, str]:
        return {m.get("name", ""): m.get("state", "") for m in self._client.get_model_repository_index()}

    def _wait_unloaded(self, model: str, timeout_s: float = UNLOAD_TIMEOUT_S) -> None:
        """Until the old instances are gone: loading beside them could double a device's memory."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._loaded_models().get(model, "") not in ("READY", "UNLOADING"):
                return
            time.sleep(0.05)
        self.log(f"portable-ep supervisor: model {model!r} still unloading after {timeout_s:.0f} s; loading it anyway")

    def restart(self, stub: StubProcess) -> RestartEvent:
        cause = describe_wait_status(stub.wait_status)
        event = RestartEvent(stub.model, stub.instance, cause, died_at=time.monotonic())
        state = self._loaded_models().get(stub.model, "")
        if state != "READY":
            # Unloaded or being reloaded on purpose (an operator, a config change): not a crash.
            event.error = f"not restarted: the model is {state or 'not in the repository index'}"
            return event
        config = self._client.get_model_config(stub.model)
        parameters = config.setdefault("parameters", {})
        event.count = int((parameters.get(RESTART_COUNT) or {}).get("string_value") or 0) + 1
        parameters[RESTART_COUNT] = {"string_value": str(event.count)}
        parameters[RESTART_CAUSE] = {"string_value": f"stub {stub.instance} (pid {stub.pid}) {cause}"}
        self.log(
            f"portable-ep supervisor: model {stub.model!r}: stub {stub.instance} (pid {stub.pid}) {cause}; "
            f"marking it not ready and reloading it (restart {event.count})"
        )
        self._client.unload_model(stub.model)  # not ready from here on, and so is the server
        self.events.append(event)
        self._wait_unloaded(stub.model)
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._client.load_model(stub.model, config=json.dumps(config))
                break
            except Exception as exc:  # noqa: BLE001 - retried: the cause may be transient (memory)
                event.error = str(exc)
                self.log(f"portable-ep supervisor: model {stub.model!r} failed to load again ({exc}); retrying in {backoff:.0f} s")
                if self._stop.wait(backoff):
                    return event
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        event.ready_after_s = time.monotonic() - event.died_at
        event.error = ""
        self.log(f"portable-ep supervisor: model {stub.model!r} ready again {event.ready_after_s:.1f} s after its stub died")
        # The new stubs are alive now: learn them so their death is seen too.
        for pid, new in find_stubs(self.server_pid).items():
            if not new.dead and pid not in self._known.handled:
                self._known.alive[pid] = new
        return event


def find_server_pid(http_port: Optional[int] = None, proc: Path = Path("/proc")) -> int:
    """The pid of the tritonserver on this host (listening on ``http_port`` when several run)."""
    candidates = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if argv and Path(argv[0]).name == "tritonserver":
            candidates.append((int(entry.name), argv))
    if http_port is not None and len(candidates) > 1:
        candidates = [(pid, argv) for pid, argv in candidates if f"--http-port={http_port}" in argv
                      or any(a == "--http-port" and b == str(http_port) for a, b in zip(argv, argv[1:]))]
    if len(candidates) != 1:
        found = ", ".join(str(pid) for pid, _ in candidates) or "none"
        raise RuntimeError(
            f"found {'no' if not candidates else 'more than one'} tritonserver process on this host (pids: {found}); "
            "pass --pid PID (the supervisor must run in the server's pid namespace)"
        )
    return candidates[0][0]
