"""One rich Console setup for every command.

rich wraps at 80 columns when output is not a terminal (CI logs, pipes), which
cuts tables of paths and provider descriptions; logs are read in wide viewers.
"""
from __future__ import annotations

import sys

from rich.console import Console

LOG_WIDTH = 140


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else LOG_WIDTH)
