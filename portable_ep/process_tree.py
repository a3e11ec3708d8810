"""tritonserver and its stubs as one process group that dies with ``portable-ep serve``.

- tritonserver starts in a session of its own, so it leads a process group its python
  stubs share (Triton does not move them out of it): killing the group ends the server
  and every stub it left, even after the server itself is gone;
- it starts through a small launcher that sets Linux's parent-death signal
  (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) and then execs tritonserver; the signal survives
  the exec. When ``serve`` dies, SIGKILL included, the kernel kills the server, and its
  stubs end themselves when they see their parent gone (Triton's stub checks every 300 ms).
  The signal follows the *thread* that started the child: start it from a thread that
  lives as long as the server (``TritonServer`` does). A launcher rather than Popen's
  ``preexec_fn``: code run between fork and exec of a threaded parent can deadlock.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Sequence

STUB_BINARY = "triton_python_backend_stub"

# Run by `python -S -c`: only the standard library, before tritonserver replaces it.
_LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass  # not Linux: the server is stopped by its process group only
if os.getppid() != parent:
    os._exit(70)  # the parent died before the signal was armed
os.execv(sys.argv[2], sys.argv[2:])
"""


def dying_with_parent(command: Sequence[str]) -> List[str]:
    """``command`` wrapped so that it is killed when this process dies."""
    return [sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), *command]


def group_members(pgid: int, proc: Path = Path("/proc")) -> List[int]:
    """Live processes of process group ``pgid`` (zombies left out)."""
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def stub_shm_regions(pids: Sequence[int]) -> List[str]:
    """The shared-memory regions (``/dev/shm`` names) the python stubs among ``pids`` use."""
    regions = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace").endswith(STUB_BINARY) and len(argv) > 2:
            name = argv[2].decode(errors="replace")
            if name and "/" not in name and name not in (".", ".."):
                regions.append(name)
    return regions


def kill_group(pgid: int, timeout_s: float = 5.0) -> List[int]:
    """SIGKILL every process of the group and wait until none is left; the pids that were killed.

    Triton removes a stub's shared-memory region when it stops the stub; a server that was
    killed cannot, so the regions of the stubs killed here are removed too.
    """
    members = group_members(pgid)
    regions = stub_shm_regions(members)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in members:  # stubs orphaned to this process (serve as a container's pid 1) are reaped here
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass
    for name in regions:
        try:
            (Path("/dev/shm") / name).unlink()
        except OSError:
            pass
    return members
