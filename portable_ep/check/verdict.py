"""Exit codes a CI can use, one per kind of failure."""
from __future__ import annotations

OK = 0
ACCURACY_FAILED = 1
LATENCY_MISSED = 2
UNREACHABLE = 3


class CheckError(Exception):
    """The model could not be reached or loaded: exit code 3, one line."""

    exit_code = UNREACHABLE
