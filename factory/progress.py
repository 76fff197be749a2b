"""Progress display for long work: rich bars on a terminal, plain lines in logs and CI."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """start/advance/update/finish tasks; used as a context manager around a build."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._totals: dict = {}
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, disable=not enabled or not self.console.is_terminal,
        )

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def start(self, description: str, total: int):
        if self.enabled and not self.console.is_terminal:
            print(f"... {description}", file=sys.stderr, flush=True)
        task = self.progress.add_task(description, total=total)
        self._totals[task] = total
        return task

    def advance(self, task, amount: int = 1):
        self.progress.advance(task, amount)

    def update(self, task, description: str, completed: int | None = None):
        self.progress.update(task, description=description, completed=completed)
        if self.enabled and not self.console.is_terminal:
            print(f"    {description}", file=sys.stderr, flush=True)

    def finish(self, task):
        self.progress.update(task, completed=self._totals[task])

    def note(self, message: str):
        self.console.print(message)


class Silent(Reporter):
    def __init__(self):
        super().__init__(Console(stderr=True, quiet=True), enabled=False)
