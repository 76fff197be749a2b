"""Run the benchmark grid: every strategy, then every artifact of each trained model.

Each strategy is trained from the same pretrained weights on the same split, with its own
(cold) feature cache, so its wall time is what a first build costs. Each artifact is
converted, run in its own runtime on the test split, and timed in a fresh process at
batch 1 (latency) and at a larger batch (throughput). A cell that fails is recorded with its
error and the grid goes on. results.json is rewritten after every cell, so an interrupted run
keeps what it measured. Every step is a pipeline stage (factory.pipeline).
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from factory import pipeline
from factory.bench import baseline, isolated, report, results as results_lib
from factory.bench.config import BenchSpec, StrategyCell
from factory.specs import CacheSpec
from targets.errors import FactoryError, one_line
from targets.tf_setup import keras


def check_run_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FactoryError(f"--out {out} already exists and is not empty; choose a new run folder")


def run(spec: BenchSpec, reporter) -> dict:
    artifact_plan = spec.plan()
    out = Path(spec.out)
    check_run_folder(out)
    prepared = pipeline.prepare(spec.data, spec.backbone, reporter)
    out.mkdir(parents=True, exist_ok=True)
    results = results_lib.new(spec, prepared.data)
    progress = GridProgress(reporter, out, results,
                            total=len(spec.cells) * (1 + len(artifact_plan)) + spec.baseline + spec.advisor)
    with tempfile.TemporaryDirectory(prefix="edgefactory-bench-") as scratch:
        scratch = Path(scratch)
        for cell in spec.cells:
            cache = CacheSpec(folder=scratch / "cache" / cell.slug)
            _run_strategy(cell, spec, cache, artifact_plan, prepared, scratch, results, progress)
            keras.backend.clear_session()
        if spec.advisor and results["advice"] is None:  # no feature-extraction cell to share a cache with
            results["advice"] = _advise(prepared, spec, CacheSpec(folder=scratch / "cache" / "advisor"), reporter)
            progress.done("advisor")
        if spec.baseline:
            results["baseline"] = _baseline(prepared, spec, scratch, reporter)
            progress.done("baseline recipe")
    results_lib.finish(results, spec.budget_ms, spec.budget_kb)
    progress.save()
    report.write_all(out, results)
    return results


class GridProgress:
    """Counts finished cells on the progress display and rewrites results.json after each one."""

    def __init__(self, reporter, out: Path, results: dict, total: int):
        self.reporter, self.out, self.results, self.total = reporter, out, results, total
        self.finished = 0
        self.started = time.perf_counter()
        self.task = reporter.start("benchmark grid", total=total)

    def done(self, what: str, count: int = 1) -> None:
        self.finished += count
        self.reporter.update(self.task, f"benchmark grid {self.finished}/{self.total}: {what}", completed=self.finished)
        self.save()

    def save(self) -> None:
        self.results["seconds"] = round(time.perf_counter() - self.started, 1)
        report.write_json(self.out, self.results)


def _run_strategy(cell: StrategyCell, spec: BenchSpec, cache: CacheSpec, artifact_plan, prepared, scratch: Path,
                  results: dict, progress: GridProgress) -> None:
    """Train one strategy, then convert and measure each planned artifact of it."""
    reporter = progress.reporter
    reporter.note(f"strategy: {cell.label}", "bold")
    result = _train(cell, spec, cache, prepared, scratch / f"{cell.slug}.weights.h5", reporter)
    results["strategies"].append(result.row)
    progress.done(f"trained {cell.label}")
    if result.trained is None:
        results["artifacts"] += [_failed_artifact(cell, t.name, m.name, "training failed") for t, m in artifact_plan]
        progress.done(f"{cell.label}: no artifacts", len(artifact_plan))
        return
    if cell.training.evaluates_on_features:  # feature extraction, not pruned
        result.row["warm_cache_train_seconds"] = _warm_rebuild_seconds(prepared, cell, cache)
        if spec.advisor:  # the race reuses this cell's feature cache
            results["advice"] = _advise(prepared, spec, cache, reporter)
            progress.done("advisor")
    artifact_dir = (Path(spec.out) / "artifacts" if spec.keep_artifacts else scratch / "artifacts") / cell.slug
    artifact_dir.mkdir(parents=True, exist_ok=True)
    context = pipeline.conversion_context(artifact_dir.name, result.trained, prepared, spec.export, artifact_plan)
    for target, mode in artifact_plan:
        results["artifacts"].append(
            _measure_artifact(cell, result, target, mode, context, artifact_dir, prepared, spec, reporter))
        progress.done(f"{cell.name} {target.name} {mode.name}")


@dataclass
class TrainedCell:
    row: dict  # the strategy's results row
    trained: pipeline.TrainedModel | None = None  # None when its training failed


def _train(cell: StrategyCell, spec: BenchSpec, cache: CacheSpec, prepared, weights_path: Path, reporter) -> TrainedCell:
    """Train in a fresh process (see isolated.py), then load the weights here for conversion."""
    row = {"strategy": cell.name, "strategy_label": cell.label}
    try:
        row.update(isolated.run(isolated.train_strategy, (spec.data, spec.backbone, cell.training, cache,
                                                          str(weights_path)),
                                weights_path.with_suffix(".json"), reporter))
        if row["status"] != "ok":
            raise FactoryError(row["error"])
        trained = pipeline.restore(prepared, cell.training, weights_path)
        row["keras_accuracy"] = trained.test_accuracy
        return TrainedCell(row, trained)
    except Exception as exc:  # a failed cell is recorded; the grid goes on
        row.update(status="failed", error=one_line(exc))
        reporter.note(f"failed: {cell.label}: {row['error']}", "red")
        return TrainedCell(row)


def _warm_rebuild_seconds(prepared, cell: StrategyCell, cache: CacheSpec) -> float | None:
    """Training again with the features now cached: what a second build on this data costs."""
    try:
        return pipeline.train(prepared, cell.training, cache=cache).train_seconds
    except Exception:  # only a ratio is lost; the cell itself trained
        return None


def _measure_artifact(cell: StrategyCell, result: TrainedCell, target, mode, context, out_dir: Path, prepared,
                      spec: BenchSpec, reporter) -> dict:
    row = {"strategy": cell.name, "strategy_label": cell.label, "target": target.name, "quantize": mode.name}
    task = reporter.start(f"{target.name} {mode.name}: convert, verify, time", total=2)
    try:
        verified = pipeline.convert_and_verify(result.trained, prepared, target, mode, out_dir, context, spec.export,
                                              reporter)
        artifact, entry = verified.artifact, verified.manifest_entry(out_dir)
        reporter.advance(task)
        keep = ("accuracy", "agreement", "max_abs_diff", "passes_gate", "min_agreement", "bytes", "gzip_bytes",
                "convert_seconds", "file", "search")
        row.update(status="ok", **{k: entry[k] for k in keep if k in entry}, **spec.timings(target, artifact))
        row.update(_training_columns(result.row))
    except Exception as exc:
        row.update(status="failed", error=one_line(exc))
        reporter.note(f"failed: {cell.label} / {target.name} {mode.name}: {row['error']}", "red")
    reporter.finish(task)
    return row


def _training_columns(strategy_row: dict) -> dict:
    return {k: strategy_row.get(k) for k in ("keras_accuracy", "train_seconds", "peak_rss_mb")}


def _failed_artifact(cell: StrategyCell, target: str, mode: str, reason: str) -> dict:
    return {"strategy": cell.name, "strategy_label": cell.label, "target": target, "quantize": mode,
            "status": "failed", "error": reason}


def _advise(prepared, spec: BenchSpec, cache: CacheSpec, reporter) -> dict:
    """The advisor's race on the grid's data, with the grid's training recipe."""
    try:
        training = dataclasses.replace(spec.training, strategy="auto")
        return pipeline.advise(prepared, training, cache, reporter).as_dict()
    except Exception as exc:
        reporter.note(f"advisor failed: {one_line(exc)}", "red")
        return {"status": "failed", "error": one_line(exc)}


def _baseline(prepared, spec: BenchSpec, scratch: Path, reporter) -> dict:
    if prepared.backbone.tokenizer:  # text: the classic recipe without a network
        reporter.note(baseline.TFIDF_LABEL, "bold")
        return baseline.tfidf(prepared)
    reporter.note(baseline.LABEL, "bold")
    row = {"strategy": baseline.NAME, "strategy_label": baseline.LABEL}
    try:
        handle = baseline.hub_saved_model(prepared, scratch / "baseline_backbone")
        keras.backend.clear_session()
        row.update(isolated.run(baseline.run, (handle, spec, str(scratch)), scratch / "baseline.json", reporter))
    except Exception as exc:
        row.update(status="failed", error=one_line(exc))
    if row["status"] != "ok":
        reporter.note(f"[red]baseline failed:[/] {row['error']}")
    return row
