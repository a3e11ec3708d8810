"""A stub's heartbeat, so that the supervisor can tell a stalled stub from a busy one.

Triton's python backend pings each stub (a shared-memory flag the stub sets every 300 ms),
but it only looks at the answer when a request is sent: a stub stopped by SIGSTOP, or
stuck in a runtime call, keeps its model READY while every request fails with "Stub
process is not healthy" (or waits forever). Nothing outside Triton can read that flag, so
the portable_ep backend keeps one of its own:

- a thread of the stub rewrites ``<dir>/<pid>.json`` every ``BEAT_INTERVAL_S``: the time
  of the beat, and, while work is pending, since when it has made no progress (a batch
  in ``execute``; for a generative model, requests in flight and no new token);
- the supervisor reads the files of the stubs it watches: no beat for
  ``heartbeat_deadline_s`` (the process is stopped, or something holds Python's lock) or
  no progress for ``progress_deadline_s`` (a runtime call that does not return) makes
  the stub stalled; it is then killed and its model reloaded like a dead one.

Times are ``time.monotonic()``: CLOCK_MONOTONIC is one clock for every process of a
host, and no wall-clock step can make a stub look stalled. The folder is
``$PORTABLE_EP_HEARTBEAT_DIR`` (``portable-ep serve`` sets one per server), else
``<tmp>/portable-ep-heartbeats-<uid>``.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

DIR_ENV = "PORTABLE_EP_HEARTBEAT_DIR"
BEAT_INTERVAL_S = 0.25
DEFAULT_HEARTBEAT_DEADLINE_S = 10.0
DEFAULT_PROGRESS_DEADLINE_S = 60.0


def heartbeat_dir() -> Path:
    configured = os.environ.get(DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"portable-ep-heartbeats-{os.getuid()}"


def process_start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: with the pid it names one process (pids are reused)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class Beat:
    """One stub's last heartbeat, as the supervisor reads it."""

    pid: int
    started: int  # the stub's start time in clock ticks (process_start_ticks)
    model: str
    beat: float  # time.monotonic() of the last beat
    stalled_since: Optional[float]  # work pending without progress since then; None when idle
    serving: bool  # False while the model initializes (a long compile is not a stall)


def read_beats(folder: Optional[Path] = None) -> Dict[int, Beat]:
    """Every readable heartbeat in ``folder``, by pid; a file being replaced is skipped this time."""
    beats = {}
    folder = folder or heartbeat_dir()
    try:
        entries = list(folder.glob("*.json"))
    except OSError:
        return beats
    for path in entries:
        try:
            data = json.loads(path.read_text())
            beat = Beat(int(data["pid"]), int(data["started"]), str(data.get("model", "")), float(data["beat"]),
                        None if data.get("stalled_since") is None else float(data["stalled_since"]),
                        bool(data.get("serving")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        beats[beat.pid] = beat
    return beats


def remove_beat(pid: int, folder: Optional[Path] = None) -> None:
    """A dead stub's file (a killed stub cannot remove its own)."""
    try:
        ((folder or heartbeat_dir()) / f"{pid}.json").unlink()
    except OSError:
        pass


def stall_cause(beat: Beat, now: float, heartbeat_deadline_s: float, progress_deadline_s: float,
                process_state: str = "") -> Optional[str]:
    """Why a serving stub counts as stalled, or None. ``process_state``: its /proc state letter."""
    if not beat.serving:
        return None
    silent = now - beat.beat
    if heartbeat_deadline_s > 0 and silent > heartbeat_deadline_s:
        how = " (the process is stopped: SIGSTOP or a debugger)" if process_state in ("T", "t") else ""
        return f"stalled: no heartbeat for {silent:.1f} s{how}, deadline {heartbeat_deadline_s:g} s"
    if progress_deadline_s > 0 and beat.stalled_since is not None and now - beat.stalled_since > progress_deadline_s:
        return (f"stalled: a request made no progress for {now - beat.stalled_since:.1f} s "
                f"(a runtime call that does not return), deadline {progress_deadline_s:g} s")
    return None


class Heartbeat:
    """The stub's side: a daemon thread that rewrites this process's heartbeat file."""

    def __init__(self, model: str, folder: Optional[Path] = None, interval_s: float = BEAT_INTERVAL_S):
        self.model = model
        self.folder = folder or heartbeat_dir()
        self.interval_s = interval_s
        self.pid = os.getpid()
        self.path = self.folder / f"{self.pid}.json"
        self.serving = False
        self._busy = 0  # execute() calls running
        self._busy_since: Optional[float] = None
        self._watch: Optional[Callable[[], tuple]] = None  # () -> (pending requests, progress counter)
        self._watched = (0, None, None)  # (pending, counter, since) at the last beat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = process_start_ticks(self.pid)
        self._thread = threading.Thread(target=self._run, name="portable-ep-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.write()
        except OSError:
            return self  # no heartbeat (a read-only folder): the supervisor then only sees dead stubs, as before
        self._thread.start()
        return self

    # -- what the model reports ---------------------------------------------------------
    def begin(self) -> None:
        with self._lock:
            if not self._busy:
                self._busy_since = time.monotonic()
            self._busy += 1

    def end(self) -> None:
        with self._lock:
            self._busy = max(0, self._busy - 1)
            self._busy_since = time.monotonic() if self._busy else None

    def watch(self, probe: Callable[[], tuple]) -> None:
        """For work done on threads of the model's own: ``probe() -> (pending, counter)``; the counter
        (tokens generated) moving is progress."""
        self._watch = probe

    def _stalled_since(self, now: float) -> Optional[float]:
        with self._lock:
            since = self._busy_since
        if self._watch is None:
            return since
        pending, counter = self._watch()
        last_pending, last_counter, last_since = self._watched
        if not pending:
            watched = None
        elif not last_pending or counter != last_counter or last_since is None:
            watched = now
        else:
            watched = last_since
        self._watched = (pending, counter, watched)
        candidates = [t for t in (since, watched) if t is not None]
        return min(candidates) if candidates else None

    # -- the file --------------------------------------------------------------------
    def write(self) -> None:
        now = time.monotonic()
        record = {"pid": self.pid, "started": self._started, "model": self.model, "beat": now,
                  "stalled_since": self._stalled_since(now), "serving": self.serving}
        partial = self.path.with_name(f".{self.pid}.json.partial")
        partial.write_text(json.dumps(record))
        os.replace(partial, self.path)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.write()
            except Exception:  # noqa: BLE001 - a full disk must not take the model down; the beat resumes
                pass

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.interval_s + 1)
        for path in (self.path, self.path.with_name(f".{self.pid}.json.partial")):
            try:
                path.unlink()
            except OSError:
                pass
