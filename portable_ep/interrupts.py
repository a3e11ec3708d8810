"""SIGTERM handled like Ctrl-C, so that ``finally`` blocks run (an export's partial folder is removed).

Python's default for SIGTERM is to die at once, cleanup skipped: ``kill``, ``docker stop``,
``timeout`` and Kubernetes all send it. Raised as :class:`Terminated` (a KeyboardInterrupt)
in the main thread, it unwinds like Ctrl-C; a second SIGTERM during that cleanup is ignored
so the cleanup completes (SIGKILL still ends the process).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM received; unwinds like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


def _raise_terminated(signum, _frame):
    signal.signal(signum, signal.SIG_IGN)  # the cleanup this starts must not be interrupted in turn
    raise Terminated(signum)


def install_sigterm_as_interrupt() -> bool:
    """From here on SIGTERM raises :class:`Terminated`; only in the main thread, only over the default."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True


@contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises :class:`Terminated` (when this thread and the handler allow it)."""
    installed = install_sigterm_as_interrupt()
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
