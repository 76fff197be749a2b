"""Run a benchmark's training in a fresh process.

A fresh process gives each strategy (and the baseline) a peak-memory figure of its own
(TensorFlow keeps memory it once allocated, so in one long process every later cell would
inherit the earlier ones'), and a training that dies (out of memory, killed) fails its cell
only. The child writes its result row to a file and reports progress through a queue to the
parent's display; a strategy's trained weights go to a file the parent loads.
"""
from __future__ import annotations

import json
import multiprocessing
import queue
from pathlib import Path

from targets.errors import FactoryError, one_line


class QueueReporter:
    """The Reporter interface, forwarded to the parent process."""

    def __init__(self, events):
        self.events, self.count = events, 0

    def start(self, description: str, total: int, unit: str = "steps"):
        self.count += 1
        self.events.put(("start", self.count, description, total, unit))
        return self.count

    def advance(self, task, amount: int = 1):
        self.events.put(("advance", task, amount))

    def update(self, task, description: str, completed: int | None = None):
        self.events.put(("update", task, description, completed))

    def finish(self, task):
        self.events.put(("finish", task))

    def note(self, message: str):
        self.events.put(("note", message))


def _relay(event: tuple, reporter, tasks: dict) -> None:
    kind, *args = event
    if kind == "start":
        tasks[args[0]] = reporter.start(args[1], total=args[2], unit=args[3])
    elif kind == "advance":
        reporter.advance(tasks[args[0]], args[1])
    elif kind == "update":
        reporter.update(tasks[args[0]], args[1], completed=args[2])
    elif kind == "finish":
        reporter.finish(tasks[args[0]])
    else:
        reporter.note(args[0])


def run(function, args: tuple, result_path: Path, reporter) -> dict:
    """`function(*args, reporter=...)` in a spawned process; the dict it returns, or a failed row."""
    context = multiprocessing.get_context("spawn")  # fork is unsafe once TensorFlow has started threads
    events = context.Queue()
    process = context.Process(target=_child, args=(function, args, str(result_path), events))
    process.start()
    tasks: dict = {}
    while process.is_alive():
        try:
            _relay(events.get(timeout=0.2), reporter, tasks)
        except queue.Empty:
            pass
    process.join()
    while True:
        try:
            _relay(events.get_nowait(), reporter, tasks)
        except queue.Empty:
            break
    if process.exitcode != 0 or not Path(result_path).is_file():
        raise FactoryError(f"the process died (exit code {process.exitcode}; -9 is a kill, e.g. out of memory); "
                           "try a smaller --limit or --batch-size")
    return json.loads(Path(result_path).read_text())


def _child(function, args: tuple, result_path: str, events) -> None:
    try:
        row = function(*args, reporter=QueueReporter(events))
    except Exception as exc:  # reported as the cell's error
        row = {"status": "failed", "error": one_line(exc)}
    Path(result_path).write_text(json.dumps(row))


def train_strategy(data, backbone, training, cache, weights_path: str, reporter) -> dict:
    """Prepare the data, train one strategy, save its weights; the result row."""
    from factory import classifier as classifier_lib, pipeline
    from factory.bench.memory import PeakMemory

    prepared = pipeline.prepare(data, backbone)
    with PeakMemory() as peak:
        trained = pipeline.train(prepared, training, cache=cache, reporter=reporter)
    trained.model.save_weights(weights_path)
    return {
        "status": "ok", "train_seconds": trained.train_seconds, **peak.as_dict(),
        **classifier_lib.trainable_summary(trained.model),
        "epochs_run": sum(p.epochs_run for p in trained.phases), "phases": [p.as_dict() for p in trained.phases],
        **({"pruning": trained.pruning} if trained.pruning else {}),
    }
