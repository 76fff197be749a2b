"""What `factory bench` runs: a list of training specs x the export spec, and how it measures.

Its defaults are the benchmark's own (shorter training than a build, every bench mode of every
target, QAT for one epoch), derived from the specs' defaults here and nowhere else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from factory import backbones
from factory.specs import BackboneSpec, DataSpec, ExportSpec, TrainingSpec, check_modality
from targets.errors import FactoryError

STRATEGY_HELP = ("feature-extraction, fine-tune:K (top K blocks) or fine-tune:all; add +prune:S to prune it to "
                 "sparsity S (e.g. fine-tune:all+prune:0.5)")
DEFAULT_STRATEGIES = ("feature-extraction", "fine-tune:2", "fine-tune:all")
BENCH_INPUT_SIZE = 96  # keeps the grid quick; pass the size you deploy
BENCH_LIMIT = 3000
BENCH_TRAINING = TrainingSpec(epochs=15, fine_tune_epochs=3)
BENCH_EXPORT = ExportSpec(targets=("tflite", "tfjs"), qat_epochs=1, latency_runs=50)


@dataclass(frozen=True)
class StrategyCell:
    """One row of the grid: a strategy as typed on the command line and the spec it trains."""

    name: str  # feature-extraction, fine-tune:3, fine-tune:all
    label: str
    training: TrainingSpec

    @classmethod
    def parse(cls, name: str, base: TrainingSpec = BENCH_TRAINING) -> "StrategyCell":
        strategy, plus, sparsity = name.partition("+prune:")
        if not plus:
            return cls._parse_strategy(name, base)
        try:
            value = float(sparsity)
        except ValueError:
            value = -1.0
        if not 0 < value < 1:
            raise FactoryError(f"--strategy {name!r}: +prune:S takes a sparsity in (0, 1), e.g. 0.5")
        pruned = dataclasses.replace(base, prune=value)
        cell = cls._parse_strategy(strategy, pruned)
        return cls(name, f"{cell.label}, pruned {pruned.prune:.0%}", cell.training)

    @classmethod
    def _parse_strategy(cls, name: str, base: TrainingSpec) -> "StrategyCell":
        if name == "feature-extraction":
            return cls(name, "feature extraction", dataclasses.replace(base, strategy="feature-extraction"))
        kind, _, depth = name.partition(":")
        if kind == "fine-tune" and depth == "all":
            return cls(name, "full fine-tune", dataclasses.replace(base, strategy="fine-tune", unfreeze=None))
        if kind == "fine-tune" and depth.isdigit() and int(depth) > 0:
            blocks = f"{depth} block" + ("s" if int(depth) > 1 else "")
            return cls(name, f"fine-tune top {blocks}",
                       dataclasses.replace(base, strategy="fine-tune", unfreeze_blocks=int(depth)))
        raise FactoryError(f"--strategy {name!r}: use {STRATEGY_HELP}")

    @property
    def slug(self) -> str:
        return self.name.replace(":", "-").replace("+", "-")


@dataclass(frozen=True)
class BenchSpec:
    data: DataSpec
    out: Path  # the run folder
    backbone: BackboneSpec = BackboneSpec(input_size=BENCH_INPUT_SIZE)
    training: TrainingSpec = BENCH_TRAINING  # what every cell shares (and the baseline's fit)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES  # the grid's rows, as on the command line
    export: ExportSpec = BENCH_EXPORT
    throughput_batch: int = 32
    throughput_runs: int = 5  # timing runs at throughput_batch; 0 skips
    baseline: bool = True  # also run the plain hub.KerasLayer recipe
    advisor: bool = True  # run the advisor and check it against the measured winner
    keep_artifacts: bool = False
    budget_ms: float | None = None
    budget_kb: float | None = None

    cells: tuple[StrategyCell, ...] = field(init=False)  # the strategies, parsed over `training`

    def __post_init__(self):
        cells = tuple(StrategyCell.parse(name, self.training) for name in dict.fromkeys(self.strategies))
        for cell in cells:
            check_modality(self.backbone.name, cell.training)
        check_modality(self.backbone.name, export=self.export)
        object.__setattr__(self, "cells", cells)
        if not cells:
            raise FactoryError(f"no strategies to run: pass --strategy ({STRATEGY_HELP})")
        if self.throughput_batch < 1 or self.throughput_runs < 0:
            raise FactoryError("--throughput-batch must be positive and --throughput-runs 0 or more")
        if self.export.latency_runs < 1:
            raise FactoryError("--latency-runs must be at least 1 for a benchmark")

    def plan(self) -> list[tuple]:
        """(target, mode) pairs: the requested modes, or else every target's bench modes (a text
        encoder's: those offered for text)."""
        if self.export.quantize:
            return self.export.plan()
        text = backbones.modality(self.backbone.name) == "text"
        return [(t, m) for t in self.export.chosen_targets() for m in t.bench_modes() if m.text or not text]

    def timings(self, target, artifact) -> dict:
        """Batch-1 latency and larger-batch throughput, each in a fresh process of the runtime."""
        return {
            "latency": target.latency(artifact, runs=self.export.latency_runs),
            "throughput": (target.latency(artifact, runs=self.throughput_runs, batch=self.throughput_batch)
                           if self.throughput_runs else None),
        }

    def as_dict(self) -> dict:
        """The configuration as recorded in results.json (flat, as the report shows it)."""
        training, export = self.training, self.export
        return {
            "data": self.data.source, "out": str(self.out), "backbone": self.backbone.name,
            "weights": self.backbone.weights, "input_size": self.backbone.input_size, "limit": self.data.limit,
            "seed": training.seed, "strategies": list(self.strategies), "targets": list(export.targets),
            "quantize": list(export.quantize), "epochs": training.epochs, "fine_tune_epochs": training.fine_tune_epochs,
            "learning_rate": training.learning_rate, "fine_tune_learning_rate": training.fine_tune_learning_rate,
            "batch_size": training.batch_size, "patience": training.patience,
            "calibration_size": export.calibration_size, "qat_epochs": export.qat_epochs,
            "latency_runs": export.latency_runs, "throughput_batch": self.throughput_batch,
            "throughput_runs": self.throughput_runs, "baseline": self.baseline, "advisor": self.advisor,
            "keep_artifacts": self.keep_artifacts, "budget_ms": self.budget_ms, "budget_kb": self.budget_kb,
        }
