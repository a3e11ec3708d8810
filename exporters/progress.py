"""Progress for export's long stages: one rich bar per stage, on stderr."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Optional


class Stages:
    def __init__(self, enabled: bool = True):
        self._progress = None
        self.timings = {}
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True), transient=False,
            )

    def __enter__(self) -> "Stages":
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.stop()

    @contextmanager
    def stage(self, description: str, total: Optional[int] = None) -> Iterator["Stage"]:
        task = self._progress.add_task(description, total=total or 1) if self._progress else None
        stage = Stage(self._progress, task)
        start = time.perf_counter()
        yield stage
        self.timings[description] = round(time.perf_counter() - start, 3)
        if self._progress:
            self._progress.update(task, completed=total or 1)


class Stage:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1) -> None:
        if self._progress:
            self._progress.advance(self._task, amount)
