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
- **stalls**: a stub that stops beating, or whose request makes no progress past a
  deadline (``portable_ep.heartbeat``), is killed and then handled like a dead one, the
  stall named as the cause and counted (``stall_count`` -> ``portable_ep_model_stalls_total``).
- **failed loads**: a model that failed to load (Triton lists it UNAVAILABLE with the
  reason) is loaded again with backoff, ``load_retries`` times at most; the attempts are
  counted (``counters``), and the reason stays in Triton's repository index.

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
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

from portable_ep.heartbeat import (
    DEFAULT_HEARTBEAT_DEADLINE_S, DEFAULT_PROGRESS_DEADLINE_S, read_beats, remove_beat, stall_cause,
)

STUB_BINARY = "triton_python_backend_stub"
RESTART_COUNT = "restart_count"
RESTART_CAUSE = "restart_cause"
STALL_COUNT = "stall_count"
POLL_INTERVAL_S = 0.2
MAX_BACKOFF_S = 30.0
DEFAULT_LOAD_RETRIES = 8  # 1+2+4+8+16+30+30+30 s: about two minutes of a cause that may pass (memory, a device)
INDEX_INTERVAL_S = 1.0  # how often the repository index is read for failed loads
# The old instance's teardown usually takes ~1 s; sometimes Triton's python backend waits far
# longer on a stub it has not yet seen dead (seen: > 10 s). Recovery must not wait for that.
UNLOAD_TIMEOUT_S = 3.0


class SupervisorError(RuntimeError):
    """The supervisor cannot start (no server to watch); one line naming the fix."""


@dataclass(frozen=True)
class StubProcess:
    pid: int
    model: str
    instance: str
    state: str  # /proc state letter: R, S, D, Z (zombie: dead, not reaped), ...
    wait_status: Optional[int] = None  # waitpid-style status, for a zombie
    started: int = 0  # start time in clock ticks since boot: with the pid, names one process (pids are reused)

    @property
    def key(self) -> tuple:
        return (self.pid, self.started)

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


def _read_stat(process: Path):
    """(state, parent pid, wait status, start time) from ``/proc/<pid>/stat``; fields after the command's ')'."""
    text = (process / "stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19]; field 52 (exit_code,
    # Linux >= 3.5, 0 without ptrace access to the process) is fields[49].
    status = int(fields[49]) if len(fields) > 49 else None
    return fields[0], int(fields[1]), status, int(fields[19])


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
            state, parent, status, started = _read_stat(entry)
            if parent != server_pid:
                continue
            if state in ("Z", "X"):
                stubs[pid] = StubProcess(pid, "", "", state, status, started)
                continue
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except (OSError, ValueError, IndexError):
            continue  # exited between listing and reading
        if argv and argv[0].endswith(STUB_BINARY) and len(argv) > 1:
            # argv: stub, <repository>/<model>/<version>/model.py, shm region, ..., instance name at [8]
            model = Path(argv[1]).parent.parent.name
            stubs[pid] = StubProcess(pid, model, argv[8] if len(argv) > 8 else model, state, started=started)
    return stubs


class RepositoryAPI:
    """The four calls of Triton's HTTP model-repository extension the supervisor makes.

    Plain urllib rather than tritonclient: the serving images carry the server, not the
    client library and its gevent stack, and these are four small JSON requests.
    """

    def __init__(self, http_url: str, timeout_s: float = 300.0):
        self.base = http_url if "://" in http_url else f"http://{http_url}"
        self.timeout_s = timeout_s

    def _call(self, path: str, body: Optional[dict] = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise RuntimeError(f"{path}: HTTP {exc.code}: {detail}") from None
        return json.loads(text) if text.strip() else None

    def get_model_repository_index(self) -> list:
        return self._call("/v2/repository/index", {}) or []

    def get_model_config(self, model: str) -> dict:
        return self._call(f"/v2/models/{model}/config")

    def unload_model(self, model: str) -> None:
        self._call(f"/v2/repository/models/{model}/unload", {})

    def load_model(self, model: str, config: Optional[str] = None) -> None:
        self._call(f"/v2/repository/models/{model}/load", {"parameters": {"config": config}} if config else {})


@dataclass
class RestartEvent:
    model: str
    instance: str
    cause: str
    died_at: float  # time.monotonic() when the death was seen
    ready_after_s: Optional[float] = None  # None until the model serves again
    count: int = 0
    error: str = ""
    stalled: bool = False  # killed by the supervisor because it stalled


def short_reason(reason: str) -> str:
    """Triton's load-failure reason without the Python traceback the stub appends ("At: ...")."""
    text = reason.split("\n\nAt:", 1)[0].strip()
    text = text.split(" is at UNAVAILABLE state: ", 1)[-1]  # a failed load call: "<path>: HTTP 400: load failed ..."
    return text[len("Internal: "):] if text.startswith("Internal: ") else text


@dataclass
class _LoadRetry:
    """A model whose load failed: tried again with backoff, ``attempts`` so far."""

    reason: str
    attempts: int = 0
    next_try: float = 0.0
    backoff: float = 1.0
    gave_up: bool = False


@dataclass
class _Known:
    alive: Dict[tuple, StubProcess] = field(default_factory=dict)  # (pid, start) -> the stub as last seen alive
    handled: Set[tuple] = field(default_factory=set)  # (pid, start) of deaths already dealt with
    models: Set[str] = field(default_factory=set)  # models ever seen with a stub: python-based ones


@dataclass
class _Restart:
    """One model's recovery in progress; advanced one step per look, so one model that will
    not load again never holds up the others."""

    stub: StubProcess
    event: RestartEvent
    config: Optional[dict] = None
    unloaded: bool = False
    next_try: float = 0.0
    backoff: float = 1.0


class ModelSupervisor:
    """Watches one tritonserver's stubs and reloads a model whose stub died (see the module doc)."""

    def __init__(self, http_url: str, server_pid: int, log: Callable[[str], None] = print,
                 interval_s: float = POLL_INTERVAL_S, heartbeat_dir: Optional[Path] = None,
                 heartbeat_deadline_s: float = DEFAULT_HEARTBEAT_DEADLINE_S,
                 progress_deadline_s: float = DEFAULT_PROGRESS_DEADLINE_S, load_retries: int = DEFAULT_LOAD_RETRIES):
        self.server_pid = server_pid
        self.log = log
        self.interval_s = interval_s
        self.heartbeat_dir = heartbeat_dir
        self.heartbeat_deadline_s = heartbeat_deadline_s
        self.progress_deadline_s = progress_deadline_s
        self.load_retries = load_retries
        self._client = RepositoryAPI(http_url)
        self._known = _Known()
        self._restarts: Dict[str, _Restart] = {}  # model -> its recovery in progress
        self._load_retries: Dict[str, _LoadRetry] = {}  # model -> its failed load being retried
        self._next_index = 0.0
        self.events: List[RestartEvent] = []
        #: What the supervisor counted, per model: stub deaths, stalls, failed loads (serve's /metrics).
        self.counters: Dict[str, Dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "ModelSupervisor":
        try:
            self._client.get_model_repository_index()
        except (OSError, RuntimeError) as exc:
            raise SupervisorError(f"cannot reach Triton's model repository API at {self._client.base} ({exc}); "
                                  "pass the server's HTTP address with --url") from None
        self.poll()  # learn the live stubs before any can die unseen
        self._thread = threading.Thread(target=self._run, name="portable-ep-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any one failure
                self.log(f"portable-ep supervisor: {type(exc).__name__}: {exc}")

    # -- detection -------------------------------------------------------------------
    def poll(self) -> List[RestartEvent]:
        """One look at the stubs: note the deaths since the last look, advance every recovery.

        Returns the restarts that finished (the model serves again, or was left alone).
        """
        if not Path(f"/proc/{self.server_pid}").exists():
            return []
        stubs = find_stubs(self.server_pid)
        known = self._known
        unnamed = []
        for stub in stubs.values():
            if stub.key in known.handled:
                continue
            if not stub.dead:
                known.alive[stub.key] = stub
                known.models.add(stub.model)
                continue
            known.handled.add(stub.key)
            seen = known.alive.pop(stub.key, None)
            if seen is None:
                unnamed.append(stub)  # died before any look saw it alive
            elif seen.model not in self._restarts:
                self._begin(StubProcess(stub.pid, seen.model, seen.instance, stub.state, stub.wait_status, stub.started))
        # A stub that vanished without a zombie was reaped by Triton: an unload or reload it
        # made on purpose, not a crash (Triton never reaps a stub that died on its own).
        live = {stub.key for stub in stubs.values()}
        for key in [key for key in known.alive if key not in live]:
            known.alive.pop(key)
        if unnamed:
            self._name_unseen_deaths(unnamed, stubs)
        self._check_stalls(stubs)
        if time.monotonic() >= self._next_index:
            self._next_index = time.monotonic() + INDEX_INTERVAL_S
            try:
                self._retry_failed_loads()
            except Exception as exc:  # noqa: BLE001 - the recoveries below must still advance
                self.log(f"portable-ep supervisor: cannot read the repository index ({type(exc).__name__}: {exc})")
        finished = []
        for model, restart in list(self._restarts.items()):
            if time.monotonic() < restart.next_try:
                continue
            try:
                done = self._advance(restart)
            except Exception as exc:  # noqa: BLE001 - tried again at the next look, never forgotten
                self.log(f"portable-ep supervisor: model {model!r}: restart step failed ({type(exc).__name__}: {exc}); trying again")
                continue
            if done:
                del self._restarts[model]
                finished.append(restart.event)
        return finished

    def _name_unseen_deaths(self, zombies: List[StubProcess], stubs: Dict[int, StubProcess]) -> None:
        """Zombies no look saw alive: a python-based model that is READY with no live stub is theirs."""
        alive_models = {s.model for s in stubs.values() if not s.dead}
        states = self._loaded_models()
        for model in sorted(known for known in self._known.models if states.get(known) == "READY"):
            if model not in alive_models and model not in self._restarts:
                status = zombies[0].wait_status if len(zombies) == 1 else None
                self._begin(StubProcess(zombies[0].pid, model, f"{model} (instance unknown)", "Z", status, zombies[0].started))

    def _check_stalls(self, stubs: Dict[int, StubProcess]) -> None:
        """A live stub whose heartbeat says stalled is killed, and its model restarted with that cause."""
        if self.heartbeat_deadline_s <= 0 and self.progress_deadline_s <= 0:
            return
        beats = read_beats(self.heartbeat_dir)
        now = time.monotonic()
        for pid in beats:
            if pid not in stubs and not Path(f"/proc/{pid}").exists():
                remove_beat(pid, self.heartbeat_dir)  # a stub that died (or was killed) cannot remove its own
        for stub in stubs.values():
            beat = beats.get(stub.pid)
            if stub.dead or beat is None or beat.started != stub.started or stub.model in self._restarts:
                continue
            cause = stall_cause(beat, now, self.heartbeat_deadline_s, self.progress_deadline_s, stub.state)
            if cause is None or stub.key not in self._known.alive:
                continue
            try:
                os.kill(stub.pid, signal.SIGKILL)  # SIGKILL ends a stopped process too
            except ProcessLookupError:
                pass
            self._known.alive.pop(stub.key, None)
            self._known.handled.add(stub.key)
            self._count(stub.model, "stalls")
            self._restarts[stub.model] = _Restart(stub, RestartEvent(stub.model, stub.instance, cause, died_at=now,
                                                                     stalled=True))

    def _count(self, model: str, what: str) -> None:
        counts = self.counters.setdefault(model, {"restarts": 0, "stalls": 0, "load_failures": 0})
        counts[what] += 1

    def _retry_failed_loads(self) -> None:
        """Models Triton lists UNAVAILABLE for a reason other than an unload: loaded again, with backoff."""
        index = self._client.get_model_repository_index()
        now = time.monotonic()
        for entry in index:
            model, state, reason = entry.get("name", ""), entry.get("state", ""), entry.get("reason", "")
            if state == "READY":
                self._load_retries.pop(model, None)
                continue
            failed = state == "UNAVAILABLE" and reason and reason != "unloaded"
            if not failed or model in self._restarts:
                continue
            retry = self._load_retries.get(model)
            if retry is None:
                retry = self._load_retries[model] = _LoadRetry(short_reason(reason), next_try=now + 1.0)
                self._count(model, "load_failures")
                if self.load_retries <= 0:
                    retry.gave_up = True
                    self.log(f"portable-ep supervisor: model {model!r} failed to load: {retry.reason}; not retried "
                             "(load retries: 0)")
                    continue
                self.log(f"portable-ep supervisor: model {model!r} failed to load: {retry.reason}; "
                         f"loading it again in {retry.backoff:.0f} s (attempt 1 of {self.load_retries})")
                retry.backoff = 2.0
                continue
            if retry.gave_up or now < retry.next_try:
                continue
            retry.attempts += 1
            try:
                self._client.load_model(model)
            except Exception as exc:  # noqa: BLE001 - the reason is Triton's; counted and retried
                retry.reason = short_reason(str(exc))
                self._count(model, "load_failures")
                if retry.attempts >= self.load_retries:
                    retry.gave_up = True
                    self.log(f"portable-ep supervisor: model {model!r} still fails to load after {retry.attempts} retries "
                             f"({retry.reason}); giving up: it stays UNAVAILABLE until it is fixed and loaded "
                             f"(POST /v2/repository/models/{model}/load)")
                    continue
                self.log(f"portable-ep supervisor: model {model!r} failed to load again ({retry.reason}); "
                         f"retrying in {retry.backoff:.0f} s (attempt {retry.attempts + 1} of {self.load_retries})")
                retry.next_try = time.monotonic() + retry.backoff
                retry.backoff = min(retry.backoff * 2, MAX_BACKOFF_S)
                continue
            self._load_retries.pop(model, None)
            self.log(f"portable-ep supervisor: model {model!r} loaded at retry {retry.attempts}")

    def load_failures(self) -> Dict[str, str]:
        """Models whose load failed and is being retried (or was given up), with the reason."""
        return {model: retry.reason for model, retry in self._load_retries.items()}

    # -- recovery --------------------------------------------------------------------
    def _loaded_models(self) -> Dict[str, str]:
        return {m.get("name", ""): m.get("state", "") for m in self._client.get_model_repository_index()}

    def _begin(self, stub: StubProcess) -> None:
        cause = describe_wait_status(stub.wait_status)
        self._restarts[stub.model] = _Restart(stub, RestartEvent(stub.model, stub.instance, cause, died_at=time.monotonic()))

    def _wait_unloaded(self, model: str, timeout_s: float = UNLOAD_TIMEOUT_S) -> None:
        """Until the old instances are gone: loading beside them could double a device's memory, and a
        health probe sent while a load overlaps the teardown was seen to block through the reload."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._loaded_models().get(model, "") not in ("READY", "UNLOADING"):
                return
            time.sleep(0.05)
        if not self._stop.is_set():
            self.log(f"portable-ep supervisor: model {model!r} still unloading after {timeout_s:.0f} s; loading it beside the old instance")

    def _advance(self, restart: _Restart) -> bool:
        """One step of a recovery; True when it is over."""
        stub, event = restart.stub, restart.event
        if not restart.unloaded:
            state = self._loaded_models().get(stub.model, "")
            if state != "READY":
                # Unloaded or being reloaded on purpose (an operator, a config change): not a crash.
                event.error = f"not restarted: the model is {state or 'not in the repository index'}"
                return True
            config = self._client.get_model_config(stub.model)
            parameters = config.setdefault("parameters", {})
            event.count = int((parameters.get(RESTART_COUNT) or {}).get("string_value") or 0) + 1
            parameters[RESTART_COUNT] = {"string_value": str(event.count)}
            parameters[RESTART_CAUSE] = {"string_value": f"stub {stub.instance} (pid {stub.pid}) {event.cause}"}
            if event.stalled:
                stalls = int((parameters.get(STALL_COUNT) or {}).get("string_value") or 0) + 1
                parameters[STALL_COUNT] = {"string_value": str(stalls)}
            self._count(stub.model, "restarts")
            restart.config = config
            self.log(
                f"portable-ep supervisor: model {stub.model!r}: stub {stub.instance} (pid {stub.pid}) {event.cause}"
                f"{'; killed it' if event.stalled else ''}; marking it not ready and reloading it (restart {event.count})"
            )
            # The model's other instances go down with it: their exit is ours, not a crash.
            for key, other in list(self._known.alive.items()):
                if other.model == stub.model:
                    self._known.alive.pop(key)
                    self._known.handled.add(key)
            restart.unloaded = True  # from here on, a retry loads (a load of a loaded model reloads it)
            self.events.append(event)
            self._client.unload_model(stub.model)  # not ready from here on, and so is the server
            self._wait_unloaded(stub.model)
        try:
            self._client.load_model(stub.model, config=json.dumps(restart.config))
        except Exception as exc:  # noqa: BLE001 - retried with backoff: the cause may pass (memory)
            event.error = str(exc)
            self.log(f"portable-ep supervisor: model {stub.model!r} failed to load again ({exc}); "
                     f"retrying in {restart.backoff:.0f} s")
            restart.next_try = time.monotonic() + restart.backoff
            restart.backoff = min(restart.backoff * 2, MAX_BACKOFF_S)
            return False
        event.ready_after_s = time.monotonic() - event.died_at
        event.error = ""
        self.log(f"portable-ep supervisor: model {stub.model!r} ready again {event.ready_after_s:.1f} s after its stub "
                 f"{'stalled' if event.stalled else 'died'}")
        return True


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
        raise SupervisorError(
            f"found {'no' if not candidates else 'more than one'} tritonserver process on this host (pids: {found}); "
            "pass --pid PID (the supervisor must run in the server's pid namespace)"
        )
    return candidates[0][0]
