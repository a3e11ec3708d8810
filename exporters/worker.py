"""Export's native work (converters, quantizers, runtime sessions) in a child process that may die.

ONNX Runtime, OpenVINO and NNCF are C++: a variant they cannot handle may end in a
segmentation fault, a hang or the kernel's out-of-memory kill rather than an exception.
Run in the export process, that would end the export with no message and leave its
``.partial`` folder behind. So export hands each such step to one long-lived worker
process and turns its death into one line naming the tool, the signal and what it was
doing ("onnxruntime crashed (SIGSEGV) creating the fp16 session"); that variant is
recorded as ``failed`` and the others go on.

Why this shape:

- One worker is reused for every step of an export, and by the next export of the same
  thread (Worker.shared), and started again only after a death, so the start-up cost
  (a Python interpreter importing the runtimes, about 2-3 s on two busy cores) is paid
  once per process, not once per variant.
- It is a fresh interpreter (``python -m portable_ep.exporters.worker``), not a ``fork()``
  of the export process: that one has run PyTorch, ONNX Runtime and OpenVINO, whose thread
  pools and locks a fork would copy in an undefined state. Not multiprocessing's spawn or
  forkserver either: they re-run the caller's main script, which breaks a user's script
  that calls ``export_bundle`` without an ``if __name__ == "__main__"`` guard.
- Steps are sent as (function, arguments) pickled over a socket pair; the worker dies with
  the export process (PR_SET_PDEATHSIG) instead of running on orphaned.
- A step that does not answer within ``timeout`` seconds is killed (SIGKILL) the same way.

The child reports its progress stages to the parent, which draws them on its own bars,
and ``phase()`` says what the child is about to do so that a death can be attributed.

Two environment variables, both for tests and debugging:

- ``PORTABLE_EP_EXPORT_ISOLATION=none`` runs every step in the export process (under a
  debugger, or where a test replaces a function with ``monkeypatch``, which a child
  process would not see).
- ``PORTABLE_EP_TEST_VARIANT_FAULT="onnx fp16=segv"`` (``segv``, ``hang`` or ``kill``; several
  comma-separated) is a test hook: the worker building that variant sends itself SIGSEGV,
  sleeps forever or SIGKILLs itself when it starts creating the variant's session, so the
  crash path is exercised by a real native death.
  It acts only inside the worker, never in the export process.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, List, Optional

from portable_ep.exporters.errors import ExportError, one_line

ISOLATION_ENV = "PORTABLE_EP_EXPORT_ISOLATION"
FAULT_ENV = "PORTABLE_EP_TEST_VARIANT_FAULT"
#: Seconds one step (building and measuring one variant, or a golden run) may take by default:
#: NNCF and the static quantizer on a model of a few hundred MB take minutes on two cores.
DEFAULT_TIMEOUT = 3600.0
#: Which library runs a provider's sessions, for the line that names who crashed.
PROVIDER_TOOLS = {"cpu": "onnxruntime", "openvino": "OpenVINO", "cuda": "onnxruntime", "ort-openvino": "onnxruntime"}

_channel = None  # the worker's end of the pipe; None in the export process
_fault = ""  # the test hook's fault for the step running now (worker only)
_shared: dict = {}  # thread id -> that thread's Worker (the worker dies with the thread that started it)


class WorkerDied(ExportError):
    """The worker died (a signal, an exit) or was stopped after the timeout; the message is one line."""


class StepFailed(ExportError):
    """The step raised inside the worker; the message is the tool's exception as one line."""


def isolation_enabled() -> bool:
    return os.environ.get(ISOLATION_ENV, "process").strip().lower() not in ("none", "0", "off", "in-process")


def phase(tool: str, doing: str) -> None:
    """Say what the worker is about to do ("onnxruntime", "creating the fp16 session"); a no-op outside it.

    The test hook's fault strikes at the step's first session creation, where the crash it
    stands for (a runtime dying on a graph it cannot handle) happens in real life.
    """
    if _channel is not None:
        _channel.send(("phase", tool, doing))
        if doing.startswith("creating"):
            inject_fault(_fault)


def fault_for(variant: str) -> str:
    """The test hook's fault for ``variant`` ("onnx fp16"), read in the export process and carried to the worker."""
    spec = os.environ.get(FAULT_ENV, "")
    for item in spec.split(","):
        name, _, fault = item.partition("=")
        if name.strip() == variant and fault.strip() in ("segv", "hang", "kill"):
            return fault.strip()
    return ""


def inject_fault(fault: str) -> None:
    """The test hook acting: a real native death of this process (never called outside the worker)."""
    if _channel is None or not fault:
        return
    if fault == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "hang":
        while True:
            time.sleep(3600)


class _ChildStages:
    """The Stages interface (exporters/progress.py) inside the worker: each stage is drawn by the parent."""

    timings: dict = {}

    @contextmanager
    def stage(self, description: str, total: Optional[int] = None) -> Iterator["_ChildStage"]:
        _channel.send(("enter", description, total))
        try:
            yield _ChildStage()
        finally:
            _channel.send(("exit",))


class _ChildStage:
    def advance(self, amount: int = 1) -> None:
        _channel.send(("advance", amount))


def _set_parent_death_signal() -> None:
    """Die with the export process instead of running on orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux, or no libc by that name: only orphan cleanup is lost
        pass


def _serve(conn) -> None:
    """The worker's loop: run each (function, args, kwargs, with_stages, fault) sent, answer, until None."""
    global _channel
    _channel = conn
    _set_parent_death_signal()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        function, args, kwargs, with_stages, fault = job
        global _fault
        _fault = fault
        try:
            if with_stages:
                kwargs = {**kwargs, "stages": _ChildStages()}
            conn.send(("result", function(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - everything a step raises goes back as one line
            conn.send(("error", one_line(exc)))


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


class Worker:
    """Runs steps in the worker process (or in this one when isolation is off); use as a context manager."""

    def __init__(self, stages, timeout: float = DEFAULT_TIMEOUT, isolate: Optional[bool] = None):
        self.stages = stages
        self.timeout = float(timeout)
        self.isolate = isolation_enabled() if isolate is None else isolate
        self._process = None
        self._conn = None
        self.starts = 0  # how many worker processes were started (1, plus one per death)
        self.kept = False  # a shared worker stays up for the next export

    @classmethod
    def shared(cls, stages, timeout: float = DEFAULT_TIMEOUT) -> "Worker":
        """This thread's worker, kept between exports (the Linux parent-death signal follows the
        thread that started the process, so a worker is never shared across threads)."""
        key = threading.get_ident()
        worker = _shared.get(key)
        if worker is None or worker.isolate != isolation_enabled():
            if worker is not None:
                worker.close()
            worker = _shared[key] = cls(stages, timeout)
            worker.kept = True
            atexit.register(worker.close)
        worker.stages, worker.timeout = stages, float(timeout)
        return worker

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        if not self.kept:
            self.close()

    def call(self, function: Callable, *args, with_stages: bool = False, fault: str = "", **kwargs) -> Any:
        """``function(*args, **kwargs)`` in the worker (``stages=`` added when ``with_stages``).

        Raises StepFailed when it raised, WorkerDied when the worker died or timed out (the
        next call starts a new worker).
        """
        if not self.isolate:
            if with_stages:
                kwargs = {**kwargs, "stages": self.stages}
            return function(*args, **kwargs)
        self._start()
        self._conn.send((function, args, kwargs, with_stages, fault))
        return self._wait()

    def _start(self) -> None:
        from multiprocessing.connection import Connection

        if self._process is not None and self._process.poll() is None:
            return
        parent, child = socket.socketpair()
        try:
            self._process = subprocess.Popen([sys.executable, "-m", "portable_ep.exporters.worker", str(child.fileno())],
                                             pass_fds=[child.fileno()], stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self.starts += 1

    def _wait(self) -> Any:
        deadline = time.monotonic() + self.timeout
        opened: List[tuple] = []  # (ExitStack, the parent's Stage) per stage the worker has open
        where = {"tool": "", "doing": "", "stage": ""}
        answered = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._kill()
                    raise WorkerDied(f"{self._who(where)} did not finish within {self.timeout:g} s{self._doing(where)} "
                                     "(stopped; a hang, or raise --variant-timeout)")
                try:
                    ready = self._conn.poll(min(remaining, 1.0))
                    message = self._conn.recv() if ready else None
                except (EOFError, OSError):
                    raise WorkerDied(self._death(where)) from None
                if message is None:
                    if self._process.poll() is not None:
                        raise WorkerDied(self._death(where))
                    continue
                kind = message[0]
                if kind in ("result", "error"):
                    answered = True
                if kind == "result":
                    return message[1]
                if kind == "error":
                    raise StepFailed(message[1])
                if kind == "enter":
                    stack = ExitStack()
                    opened.append((stack, stack.enter_context(self.stages.stage(message[1], message[2]))))
                    where.update(stage=message[1], tool="", doing="")
                elif kind == "advance" and opened:
                    opened[-1][1].advance(message[1])
                elif kind == "exit" and opened:
                    opened.pop()[0].close()
                elif kind == "phase":
                    where.update(tool=message[1], doing=message[2])
        finally:
            while opened:
                opened.pop()[0].close()
            if not answered and self._process is not None:
                # Interrupted while the step runs (Ctrl-C, an error here): its answer would reach the next step.
                self._kill()

    @staticmethod
    def _who(where) -> str:
        return where["tool"] or "the export worker"

    @staticmethod
    def _doing(where) -> str:
        if where["doing"]:
            return f" {where['doing']}"
        return f" in '{where['stage']}'" if where["stage"] else ""

    def _death(self, where) -> str:
        try:
            code = self._process.wait(5)
        except subprocess.TimeoutExpired:  # the socket closed but the process lingers: stop it
            self._process.kill()
            code = self._process.wait()
        self._drop()
        who, doing = self._who(where), self._doing(where)
        if code is not None and code < 0:
            name = _signal_name(-code)
            if -code == signal.SIGKILL:
                return f"{who} was killed (SIGKILL, most likely by the out-of-memory killer){doing}"
            return f"{who} crashed ({name}){doing}"
        return f"{who} ended the export worker (exit status {code}){doing}"

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._process = None

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._conn.send(None)
            self._process.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self._kill()


if __name__ == "__main__":
    # Run as ``python -m``: this file is __main__, but the functions steps call (phase) live in the
    # imported module, so that is the one whose channel is set.
    from multiprocessing.connection import Connection

    from portable_ep.exporters import worker

    worker._serve(Connection(int(sys.argv[1])))

