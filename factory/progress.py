"""Progress display for long work: rich bars on a terminal, plain lines in logs and CI.

Every task counts in a unit (images, steps) and shows its rate and the time left; in a log a
line is printed at most every LOG_EVERY_S seconds per task, so long work visibly moves.
"""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

LOG_EVERY_S = 10.0


def rate_text(done: float, seconds: float, unit: str) -> str:
    if not (seconds > 0 and done):
        return f"- {unit}/s"
    rate = done / seconds
    return f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.2g} {unit}/s"


def duration_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(rate_text(task.completed, task.elapsed or 0, task.fields.get("unit", "steps")))


class _Task:
    def __init__(self, description: str, total: int, unit: str):
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self.started = self.logged = time.perf_counter()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        parts = [f"{self.done:,}/{self.total:,} {self.unit}", rate_text(self.done, elapsed, self.unit)]
        if 0 < self.done < self.total:
            parts.append(f"{duration_text(elapsed * (self.total - self.done) / self.done)} left")
        return f"    {self.description}: " + ", ".join(parts)


class Reporter:
    """start/advance/update/finish tasks; used as a context manager around a build."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.logging = enabled and not self.console.is_terminal
        self._tasks: dict = {}
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, disable=not enabled or not self.console.is_terminal,
        )

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def start(self, description: str, total: int, unit: str = "steps"):
        if self.logging:
            print(f"... {description} ({total:,} {unit})", file=sys.stderr, flush=True)
        task = self.progress.add_task(description, total=total, unit=unit)
        self._tasks[task] = _Task(description, total, unit)
        return task

    def advance(self, task, amount: int = 1):
        self.progress.advance(task, amount)
        state = self._tasks[task]
        state.done += amount
        if self.logging and time.perf_counter() - state.logged >= LOG_EVERY_S:
            state.logged = time.perf_counter()
            print(state.line(), file=sys.stderr, flush=True)

    def update(self, task, description: str, completed: int | None = None):
        self.progress.update(task, description=description, completed=completed)
        state = self._tasks[task]
        if completed is not None:
            state.done = completed
        if self.logging:
            print(f"    {description}", file=sys.stderr, flush=True)

    def finish(self, task):
        state = self._tasks[task]
        self.progress.update(task, completed=state.total)
        if self.logging and state.done and time.perf_counter() - state.started >= LOG_EVERY_S:
            print(state.line(), file=sys.stderr, flush=True)

    def note(self, message: str, style: str | None = None):
        """A line of text (never read as markup: it may hold file names and labels)."""
        self.console.print(Text(message, style=style or ""))


class Silent(Reporter):
    def __init__(self):
        super().__init__(Console(stderr=True, quiet=True), enabled=False)
