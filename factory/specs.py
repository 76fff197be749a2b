"""What to build, as small typed specs: each holds its own defaults and checks itself when made.

A bad value raises FactoryError the moment a spec is created, before any data is read or
TensorFlow is imported. The pipeline stages (factory.pipeline) take these specs:

    DataSpec      where the labelled examples come from and how they are split
    BackboneSpec  the pretrained network and its input size
    TrainingSpec  the strategy and its hyper-parameters (everything that shapes the weights)
    ExportSpec    targets, quantization modes, parity threshold, timing
    PublishSpec   the store a finished build is released into
    CacheSpec     where frozen-backbone features are cached
    BuildSpec     all of the above, plus the output folder: what `factory build` does
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from factory import backbones, strategies
from targets import registry
from targets.errors import FactoryError

DEFAULT_SEED = 0
QAT_UNDOES_PRUNING = ("--quantize qat retrains every weight of a pruned model and undoes --prune: use another "
                      "mode with --prune")
ADVISOR_COST_SHARE = 0.3  # the advisor's race costs at most this share of training every candidate fully


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise FactoryError(message)


def _positive(value, option: str) -> None:
    _check(value > 0, f"{option} {value} must be positive")


@dataclass(frozen=True)
class DataSpec:
    source: str  # a class folder, a .csv / .jsonl file, or a named source (fashion-mnist, digits, debian-packages, ...)
    limit: int | None = None  # a stratified subset of this many examples, before splitting
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    strict: bool = False  # fail on the first unreadable example instead of skipping it
    seed: int = DEFAULT_SEED  # of the subset and the split
    text_column: str = "text"  # a text .csv / .jsonl: the column holding the text
    label_column: str = "label"  # ... and the one holding its label

    def __post_init__(self):
        _check(bool(self.source), "--data is empty: pass a folder or a named source")
        _check(self.limit is None or self.limit >= 2, "--limit must be at least 2")
        _check(0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1,
               "--val-fraction and --test-fraction must be in (0, 1) and sum to less than 1")
        object.__setattr__(self, "text_column", self.text_column.strip())
        object.__setattr__(self, "label_column", self.label_column.strip())
        _check(bool(self.text_column) and bool(self.label_column)
               and self.text_column.lower() != self.label_column.lower(),
               "--text-column and --label-column must name two different columns")


@dataclass(frozen=True)
class BackboneSpec:
    name: str = backbones.DEFAULT_BACKBONE  # a registry name or hub:HANDLE_OR_DIR
    input_size: int | None = None  # pixels (text encoders: tokens per text); None: the backbone's default
    weights: str | None = None  # local weights file for keras.applications backbones

    def __post_init__(self):
        backbones.check_name(self.name)
        if backbones.modality(self.name) == "text":
            low, high = backbones.TEXT_LENGTHS
            _check(self.input_size is None or low <= self.input_size <= high,
                   f"--input-size {self.input_size} is out of range for a text encoder: use {low}..{high} tokens "
                   f"(default {backbones.DEFAULT_TEXT_LENGTH})")
        else:
            _check(self.input_size is None or 32 <= self.input_size <= 1024,
                   f"--input-size {self.input_size} is out of range: use 32..1024 (e.g. 96 or 224)")


@dataclass(frozen=True)
class TrainingSpec:
    strategy: str = "feature-extraction"  # feature-extraction, fine-tune, or auto (the advisor decides)
    unfreeze: int | None = 20  # fine-tune: top N weighted backbone layers; None = all
    unfreeze_blocks: int | None = None  # fine-tune: top K blocks instead of N layers
    gradual: bool = False  # fine-tune: one more block per stage while validation improves
    augment: bool | None = None  # flip / crop / rotate; None: on when fine-tuning
    class_weights: bool = True  # balanced class weights when the classes are imbalanced (>1.5x)
    epochs: int = 30  # head training (feature extraction, and phase 1 of fine-tuning)
    fine_tune_epochs: int = 5
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float | None = None  # None: learning_rate / 10
    batch_size: int = 32
    dropout: float = 0.2
    patience: int = 5  # early stopping: epochs without a better validation loss
    seed: int = DEFAULT_SEED  # of the weight initialization and the shuffling
    advisor_budget_s: float | None = None  # auto: the advisor's race stops its trials after this many seconds
    prune: float = 0.0  # after training, zero this share of the backbone's convolution weights (0: off)
    prune_epochs: int = 3  # training while pruning (the masks grow over its first two thirds)

    def __post_init__(self):
        choices = (*strategies.NAMES, "auto")
        _check(self.strategy in choices, f"unknown strategy {self.strategy!r}: choose one of {', '.join(choices)}")
        _check(self.unfreeze is None or self.unfreeze >= 0, f"--unfreeze {self.unfreeze} must be 0 or more")
        _check(self.unfreeze_blocks is None or self.unfreeze_blocks >= 0,
               f"--unfreeze-blocks {self.unfreeze_blocks} must be 0 or more")
        for option, value in (("--epochs", self.epochs), ("--fine-tune-epochs", self.fine_tune_epochs),
                              ("--learning-rate", self.learning_rate), ("--batch-size", self.batch_size),
                              ("--patience", self.patience), ("--prune-epochs", self.prune_epochs)):
            _positive(value, option)
        _check(self.fine_tune_learning_rate is None or self.fine_tune_learning_rate > 0,
               "--fine-tune-learning-rate must be positive")
        _check(0 <= self.dropout < 1, f"--dropout {self.dropout} must be in [0, 1)")
        _check(0 <= self.prune < 1, f"--prune {self.prune} must be a sparsity in [0, 1), e.g. 0.5")
        _check(self.advisor_budget_s is None or 0 < self.advisor_budget_s < float("inf"),
               f"--budget-s {self.advisor_budget_s} must be a positive number of seconds")
        _check(self.advisor_budget_s is None or self.strategy == "auto", "--budget-s applies to --strategy auto only")

    @property
    def fine_tunes(self) -> bool:
        return self.strategy == "fine-tune"

    @property
    def evaluates_on_features(self) -> bool:
        """The trained model's backbone is the frozen one whose features are cached."""
        return not (self.fine_tunes or self.prune)

    @property
    def augments(self) -> bool:
        return self.fine_tunes if self.augment is None else self.augment

    @property
    def backbone_learning_rate(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate / 10


@dataclass(frozen=True)
class ExportSpec:
    targets: tuple[str, ...] = ("tflite",)
    quantize: tuple[str, ...] = ()  # empty: each target's first mode
    min_agreement: float | None = None  # None: each mode's own threshold (its target's MODES table)
    calibration_size: int = 200  # training examples that calibrate full-integer modes
    int8_io: str = "uint8"  # TFLite: input/output type of full-integer models
    qat_epochs: int = 2  # quantization-aware training before a qat conversion
    qat_learning_rate: float = 1e-5
    latency_runs: int = 30  # batch-1 timing runs per artifact in a fresh process; 0 skips
    verify_images: int = 5000  # test images each artifact runs on (a stratified sample of a larger split)

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(dict.fromkeys(self.targets)))
        object.__setattr__(self, "quantize", tuple(dict.fromkeys(self.quantize)))
        _check(bool(self.targets), "no --target given: choose one of " + ", ".join(registry.names()))
        self.plan()  # unknown targets and modes no chosen target offers fail here
        _check(self.min_agreement is None or 0 <= self.min_agreement <= 1, "--min-agreement must be in [0, 1]")
        _positive(self.calibration_size, "--calibration-size")
        _check(self.int8_io in ("uint8", "int8"), f"--int8-io {self.int8_io!r}: choose uint8 or int8")
        _positive(self.qat_epochs, "--qat-epochs")
        _check(self.latency_runs >= 0, "--latency-runs must be 0 or more")
        _positive(self.verify_images, "--verify-images")

    def chosen_targets(self) -> list:
        return [registry.get(name, int8_io=self.int8_io) for name in self.targets]

    def plan(self) -> list[tuple]:
        """(target, mode) pairs: each requested mode on every chosen target that offers it; without
        --quantize, each target's first mode."""
        chosen = self.chosen_targets()
        if not self.quantize:
            return [(t, t.modes[0]) for t in chosen]
        for name in self.quantize:
            if not any(t.mode(name) for t in chosen):
                offered = "; ".join(f"{t.name}: {', '.join(m.name for m in t.modes)}" for t in chosen)
                raise FactoryError(f"--quantize {name} is not offered by the chosen targets ({offered})")
        return [(t, t.mode(name)) for t in chosen for name in self.quantize if t.mode(name)]

    def threshold(self, mode) -> float:
        return mode.min_agreement if self.min_agreement is None else self.min_agreement


@dataclass(frozen=True)
class PublishSpec:
    store: Path
    model_name: str
    version: str | None = None  # None: the next number
    sign_key: Path | None = None  # Ed25519 private key that signs the release's manifest


@dataclass(frozen=True)
class CacheSpec:
    enabled: bool = True
    folder: Path | None = None  # None: $EDGEFACTORY_CACHE, else ~/.cache/edgefactory

    @property
    def features_folder(self) -> Path:
        root = self.folder or Path(os.environ.get("EDGEFACTORY_CACHE", Path.home() / ".cache" / "edgefactory"))
        return Path(root) / "features"

    @property
    def store_folder(self) -> Path | None:
        """Where frozen-backbone features are kept (factory.cache); None when the cache is off."""
        return self.features_folder if self.enabled else None


def check_modality(backbone: str, training: TrainingSpec | None = None, export: ExportSpec | None = None) -> None:
    """The training options and export modes a text encoder refuses."""
    if backbones.modality(backbone) != "text":
        return
    if training:
        _check(not training.augment, "--augment flips, crops and rotates images: it does not apply to a text encoder")
        _check(not training.prune, "--prune zeroes convolution weights: a text encoder has none (use it with an "
               "image backbone)")
    if export:
        refused = [f"{target.name} {mode.name}" for target, mode in export.plan() if not mode.text]
        offered = "; ".join(f"{t.name}: {', '.join(m.name for m in t.modes if m.text)}"
                            for t in export.chosen_targets())
        _check(not refused, f"--quantize: {', '.join(refused)} is not offered for a text encoder (its input is token "
                            f"ids, nothing to calibrate); offered: {offered}")


@dataclass(frozen=True)
class BuildSpec:
    """Everything `factory build` does: train on `data`, export to `out`, maybe publish."""

    data: DataSpec
    out: Path
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    publish: PublishSpec | None = None
    cache: CacheSpec = field(default_factory=CacheSpec)
    resume: bool = False  # continue an interrupted build from its checkpoint

    def __post_init__(self):
        check_modality(self.backbone.name, self.training, self.export)
        _check(not (self.training.prune and "qat" in self.export.quantize), QAT_UNDOES_PRUNING)
        _check(not (self.resume and self.training.strategy == "auto"),
               "--resume does not work with --strategy auto (its race is timed and may pick differently): run "
               "`factory advise`, then build and resume with the strategy it recommends")

    @property
    def checkpoint_dir(self) -> Path:
        """Where an unfinished build keeps its checkpoint: a hidden folder beside --out."""
        out = Path(self.out).resolve()
        return out.parent / f".{out.name}.checkpoint"

    def hyperparameters(self) -> dict:
        """Every setting of the build, flat, as the manifest records it (resolved values)."""
        data, backbone, training, export, publish = self.data, self.backbone, self.training, self.export, self.publish
        return {
            "data": data.source, "out": str(self.out), "backbone": backbone.name, "weights": backbone.weights,
            "input_size": backbone.input_size, "strategy": training.strategy, "unfreeze": training.unfreeze,
            "unfreeze_blocks": training.unfreeze_blocks, "gradual": training.gradual, "augment": training.augments,
            "class_weights": training.class_weights, "cache": self.cache.enabled,
            "cache_dir": str(self.cache.folder) if self.cache.folder else None, "resume": self.resume,
            "epochs": training.epochs, "fine_tune_epochs": training.fine_tune_epochs,
            "learning_rate": training.learning_rate, "fine_tune_learning_rate": training.backbone_learning_rate,
            "batch_size": training.batch_size, "dropout": training.dropout, "patience": training.patience,
            "seed": training.seed, "advisor_budget_s": training.advisor_budget_s,
            "prune": training.prune, "prune_epochs": training.prune_epochs,
            "split_seed": data.seed, "limit": data.limit, "val_fraction": data.val_fraction,
            "test_fraction": data.test_fraction, "strict_data": data.strict, "text_column": data.text_column,
            "label_column": data.label_column, "targets": list(export.targets),
            "quantize": list(export.quantize), "min_agreement": export.min_agreement,
            "calibration_size": export.calibration_size, "int8_io": export.int8_io, "qat_epochs": export.qat_epochs,
            "qat_learning_rate": export.qat_learning_rate, "latency_runs": export.latency_runs,
            "verify_images": export.verify_images,
            "publish": str(publish.store) if publish else None, "model_name": publish.model_name if publish else None,
            "version": publish.version if publish else None,
        }


def as_dict(spec) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(spec), default=str))


def weights_fingerprint(data: DataSpec, backbone: BackboneSpec, training: TrainingSpec) -> str:
    """What must match for a checkpoint to be resumed: the specs that decide the trained weights."""
    fields = {"data": as_dict(data), "backbone": as_dict(backbone), "training": as_dict(training)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
