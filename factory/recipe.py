"""Everything a build needs, in one dataclass (filled from CLI flags)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Recipe:
    data: str
    out: str
    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # local weights file for keras.applications backbones
    input_size: int | None = None  # None: the backbone's native size
    strategy: str = "feature-extraction"
    unfreeze: int | None = 20  # fine-tune: top N weighted backbone layers; None = all
    unfreeze_blocks: int | None = None  # fine-tune: top K blocks instead of N layers
    gradual: bool = False  # fine-tune: one more block per stage while validation improves
    augment: bool | None = None  # flip / crop / rotate while fine-tuning; None: on for fine-tune
    class_weights: bool = True  # balanced class weights when the classes are imbalanced (>1.5x)
    cache: bool = True  # cache frozen-backbone features on disk
    cache_dir: str | None = None  # default: $EDGEFACTORY_CACHE or ~/.cache/edgefactory
    resume: bool = False  # continue an interrupted build from its checkpoint
    epochs: int = 30  # head training (feature extraction, and phase 1 of fine-tuning)
    fine_tune_epochs: int = 5
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float | None = None  # None: learning_rate / 10
    batch_size: int = 32
    dropout: float = 0.2
    patience: int = 5
    seed: int = 0
    limit: int | None = None  # stratified subset of the source, before splitting
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    strict_data: bool = False
    targets: list[str] = field(default_factory=lambda: ["tflite"])
    quantize: list[str] = field(default_factory=list)  # empty: each target's default
    min_agreement: float | None = None  # None: per-quantization default (targets.parity)
    calibration_size: int = 200  # representative images for int8 calibration
    int8_io: str = "uint8"  # input/output type of full-integer TFLite models
    qat_epochs: int = 2
    latency_runs: int = 30  # batch-1 timing runs per artifact in a fresh process; 0 skips
    publish: str | None = None  # store folder to publish the finished build into
    model_name: str | None = None  # name in the store (default: the --out folder's name)
    version: str | None = None  # version in the store (default: next number)

    def __post_init__(self):
        if self.fine_tune_learning_rate is None:
            self.fine_tune_learning_rate = self.learning_rate / 10
        if self.augment is None and self.strategy != "auto":
            self.augment = self.strategy == "fine-tune"

    @property
    def checkpoint_dir(self) -> Path:
        """Where an unfinished build keeps its checkpoint: a hidden folder beside --out."""
        out = Path(self.out).resolve()
        return out.parent / f".{out.name}.checkpoint"

    def as_dict(self) -> dict:
        return asdict(self)
