"""Run the benchmark grid: every strategy, then every artifact of each trained model.

Each strategy is trained from the same pretrained weights on the same split, with its own
(cold) feature cache, so its wall time is what a first build costs. Each artifact is
converted, run in its own runtime on the whole test split, and timed in a fresh process at
batch 1 (latency) and at a larger batch (throughput). A cell that fails is recorded with its
error and the grid goes on. results.json is rewritten after every cell, so an interrupted run
keeps what it measured.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from factory import backbones, build, classifier as classifier_lib, data as data_lib
from factory.bench import baseline, isolated, report, results as results_lib
from targets.errors import FactoryError, one_line
from factory.recipe import Recipe
from factory.strategies.feature_extraction import train_head
from factory.strategies.session import TrainingSession
from targets.tf_setup import keras
from targets import base as targets

STRATEGY_HELP = "feature-extraction, fine-tune:K (top K blocks) or fine-tune:all"


@dataclass(frozen=True)
class StrategyCell:
    spec: str  # as typed: feature-extraction, fine-tune:3, fine-tune:all
    label: str
    recipe_fields: dict

    @classmethod
    def parse(cls, spec: str) -> "StrategyCell":
        if spec == "feature-extraction":
            return cls(spec, "feature extraction", {"strategy": "feature-extraction"})
        name, _, depth = spec.partition(":")
        if name == "fine-tune" and depth == "all":
            return cls(spec, "full fine-tune", {"strategy": "fine-tune", "unfreeze": None})
        if name == "fine-tune" and depth.isdigit() and int(depth) > 0:
            blocks = f"{depth} block" + ("s" if int(depth) > 1 else "")
            return cls(spec, f"fine-tune top {blocks}", {"strategy": "fine-tune", "unfreeze_blocks": int(depth)})
        raise FactoryError(f"--strategy {spec!r}: use {STRATEGY_HELP}")


@dataclass
class BenchConfig:
    data: str
    out: str  # the run folder
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    input_size: int | None = 96
    limit: int | None = 3000
    seed: int = 0
    strategies: list[str] = field(default_factory=lambda: ["feature-extraction", "fine-tune:2", "fine-tune:all"])
    targets: list[str] = field(default_factory=lambda: ["tflite", "tfjs"])
    quantize: list[str] = field(default_factory=list)  # empty: every mode each target offers
    epochs: int = 15
    fine_tune_epochs: int = 3
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float | None = None
    batch_size: int = 32
    patience: int = 5
    calibration_size: int = 200
    qat_epochs: int = 1
    latency_runs: int = 50
    throughput_batch: int = 32
    throughput_runs: int = 5
    baseline: bool = True
    advisor: bool = True
    keep_artifacts: bool = False
    budget_ms: float | None = None
    budget_kb: float | None = None

    def recipe(self, cell: StrategyCell, cache_dir: Path) -> Recipe:
        return Recipe(
            data=self.data, out=str(Path(self.out) / "artifacts" / slug(cell.spec)), backbone=self.backbone,
            weights=self.weights, input_size=self.input_size, limit=self.limit, seed=self.seed,
            epochs=self.epochs, fine_tune_epochs=self.fine_tune_epochs, learning_rate=self.learning_rate,
            fine_tune_learning_rate=self.fine_tune_learning_rate, batch_size=self.batch_size,
            patience=self.patience, calibration_size=self.calibration_size, qat_epochs=self.qat_epochs,
            cache_dir=str(cache_dir), targets=self.targets, quantize=self.quantize, **cell.recipe_fields,
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def timings(self, target, artifact) -> dict:
        """Batch-1 latency and larger-batch throughput, each in a fresh process of the runtime."""
        return {
            "latency": target.latency(artifact, runs=self.latency_runs),
            "throughput": (target.latency(artifact, runs=self.throughput_runs, batch=self.throughput_batch)
                           if self.throughput_runs else None),
        }


def slug(spec: str) -> str:
    return spec.replace(":", "-")


# Without --quantize: every TFLite mode, and TF.js float32 and uint8 (TF.js float16 has the
# accuracy of float32 at half the size in every run so far; --quantize float16 adds it).
DEFAULT_MODES = {"tflite": ("float32", "float16", "dynamic", "int8", "qat"), "tfjs": ("float32", "uint8")}


def plan(config: BenchConfig) -> list[tuple]:
    """(target, mode) pairs: the requested modes on every target offering them, or the defaults."""
    if config.quantize:
        return build.plan_artifacts(config.targets, config.quantize)
    chosen = [targets.get(name) for name in dict.fromkeys(config.targets)]
    return [(t, mode) for t in chosen for mode in DEFAULT_MODES.get(t.name, t.quantize_modes)]


def check_run_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FactoryError(f"--out {out} already exists and is not empty; choose a new run folder")


def run(config: BenchConfig, reporter) -> dict:
    cells = [StrategyCell.parse(spec) for spec in dict.fromkeys(config.strategies)]
    if not cells:
        raise FactoryError(f"no strategies to run: pass --strategy ({STRATEGY_HELP})")
    artifact_plan = plan(config)
    backbone = backbones.resolve(config.backbone, config.input_size, config.weights)
    out = Path(config.out)
    check_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data_lib.load(config.data, backbone.input_size, limit=config.limit, seed=config.seed)
    results = results_lib.new(config, dataset)
    progress = GridProgress(reporter, out, results,
                            total=len(cells) * (1 + len(artifact_plan)) + config.baseline + config.advisor)
    with tempfile.TemporaryDirectory(prefix="edgefactory-bench-") as scratch:
        scratch = Path(scratch)
        for cell in cells:
            recipe = config.recipe(cell, scratch / "cache" / slug(cell.spec))
            _run_strategy(cell, recipe, config, artifact_plan, backbone, dataset, scratch, results, progress)
            keras.backend.clear_session()
        if config.advisor and results["advice"] is None:  # no feature-extraction cell to share a cache with
            advisor_recipe = config.recipe(StrategyCell.parse("feature-extraction"), scratch / "cache" / "advisor")
            results["advice"] = _advise(backbone, dataset, advisor_recipe, reporter)
            progress.done("advisor")
        if config.baseline:
            results["baseline"] = _baseline(backbone, dataset, config, scratch, reporter)
            progress.done("baseline recipe")
    results_lib.finish(results, config.budget_ms, config.budget_kb)
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


def _run_strategy(cell, recipe, config, artifact_plan, backbone, dataset, scratch, results, progress) -> None:
    """Train one strategy, then convert and measure each planned artifact of it."""
    reporter = progress.reporter
    reporter.note(f"[bold]strategy:[/] {cell.label}")
    trained = _train(cell, recipe, backbone, dataset, scratch / f"{slug(cell.spec)}.weights.h5", reporter)
    results["strategies"].append(trained.row)
    progress.done(f"trained {cell.label}")
    if trained.classifier is None:
        results["artifacts"] += [_failed_artifact(cell, t.name, m, "training failed") for t, m in artifact_plan]
        progress.done(f"{cell.label}: no artifacts", len(artifact_plan))
        return
    if cell.spec == "feature-extraction":
        trained.row["warm_cache_train_seconds"] = _warm_rebuild_seconds(backbone, dataset, recipe)
        if config.advisor:  # the probe reuses this cell's feature cache
            results["advice"] = _advise(backbone, dataset, recipe, reporter)
            progress.done("advisor")
    artifact_dir = Path(recipe.out) if config.keep_artifacts else scratch / "artifacts" / slug(cell.spec)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    context = build.conversion_context(trained.classifier, dataset, recipe)
    for target, mode in artifact_plan:
        results["artifacts"].append(
            _measure_artifact(cell, trained, target, mode, context, artifact_dir, dataset, config, reporter))
        progress.done(f"{cell.spec} {target.name} {mode}")


@dataclass
class Trained:
    row: dict
    classifier: classifier_lib.Classifier | None = None
    keras_probs: np.ndarray | None = None


def _train(cell: StrategyCell, recipe: Recipe, backbone, dataset, weights_path: Path, reporter) -> Trained:
    """Train in a fresh process (see isolated.py), then load the weights here for conversion."""
    row = {"strategy": cell.spec, "strategy_label": cell.label}
    try:
        row.update(isolated.run(isolated.train_strategy, (recipe, str(weights_path)),
                                weights_path.with_suffix(".json"), reporter))
        if row["status"] != "ok":
            raise FactoryError(row["error"])
        model = classifier_lib.build(backbone, len(dataset.class_names), recipe.dropout)
        model.model.load_weights(str(weights_path))
        probs = model.model.predict(dataset.test.images, batch_size=64, verbose=0)
        row["keras_accuracy"] = float(np.mean(probs.argmax(1) == dataset.test.labels))
        return Trained(row, model, probs)
    except Exception as exc:  # a failed cell is recorded; the grid goes on
        row.update(status="failed", error=one_line(exc))
        reporter.note(f"[red]failed:[/] {cell.label}: {row['error']}")
        return Trained(row)


def _warm_rebuild_seconds(backbone, dataset, recipe: Recipe) -> float | None:
    """Head training again with the features now cached: what a second build on this data costs."""
    from factory.progress import Silent

    try:
        model = classifier_lib.build(backbone, len(dataset.class_names), recipe.dropout)
        start = time.perf_counter()
        train_head(model, dataset, recipe, Silent(), TrainingSession(model.model))
        return round(time.perf_counter() - start, 2)
    except Exception:  # only a ratio is lost; the cell itself trained
        return None


def _measure_artifact(cell, trained: Trained, target, mode, context, out_dir, dataset, config, reporter) -> dict:
    row = {"strategy": cell.spec, "strategy_label": cell.label, "target": target.name, "quantize": mode}
    try:
        entry = build.export_artifact(
            target, mode, trained.classifier.model, context, out_dir, dataset.test, trained.keras_probs, reporter,
            min_agreement=None, latency_runs=0, gate=False,
        )
        artifact = targets.Artifact(target.name, mode, out_dir / entry["file"], [out_dir / f for f in entry["files"]])
        keep = ("accuracy", "agreement", "max_abs_diff", "passes_gate", "min_agreement", "bytes", "convert_seconds",
                "file")
        row.update(status="ok", **{k: entry[k] for k in keep}, **config.timings(target, artifact))
        row.update(_training_columns(trained.row))
    except Exception as exc:
        row.update(status="failed", error=one_line(exc))
        reporter.note(f"[red]failed:[/] {cell.label} / {target.name} {mode}: {row['error']}")
    return row


def _training_columns(strategy_row: dict) -> dict:
    return {k: strategy_row.get(k) for k in ("keras_accuracy", "train_seconds", "peak_rss_mb")}


def _failed_artifact(cell, target: str, mode: str, reason: str) -> dict:
    return {"strategy": cell.spec, "strategy_label": cell.label, "target": target, "quantize": mode,
            "status": "failed", "error": reason}


def _advise(backbone, dataset, recipe: Recipe, reporter) -> dict:
    from factory import advisor

    try:
        model = classifier_lib.build(backbone, len(dataset.class_names), recipe.dropout)
        advice = advisor.recommend(advisor.probe(model, dataset, seed=recipe.seed, cache_dir=recipe.cache_dir))
        return advice.as_dict()
    except Exception as exc:
        reporter.note(f"[red]advisor failed:[/] {one_line(exc)}")
        return {"status": "failed", "error": one_line(exc)}


def _baseline(backbone, dataset, config: BenchConfig, scratch: Path, reporter) -> dict:
    reporter.note(f"[bold]{baseline.LABEL}[/]")
    row = {"strategy": baseline.NAME, "strategy_label": baseline.LABEL}
    try:
        model = classifier_lib.build(backbone, len(dataset.class_names))
        handle = baseline.hub_saved_model(model, scratch / "baseline_backbone")
        keras.backend.clear_session()
        row.update(isolated.run(baseline.run, (handle, config, backbone.input_size, str(scratch)),
                                scratch / "baseline.json", reporter))
    except Exception as exc:
        row.update(status="failed", error=one_line(exc))
    if row["status"] != "ok":
        reporter.note(f"[red]baseline failed:[/] {row['error']}")
    return row
