"""The Target protocol and registry: the deployment side of the factory.

A target turns a trained Keras model into artifact files and runs those files in their own
runtime. `factory/` reaches targets only through `get()`; a new target is one module plus one
line in REGISTRY.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class Artifact:
    target: str
    quantize: str
    path: Path  # the main file (or model.json for a folder of files)
    files: list[Path] = field(default_factory=list)  # every file written, main file included
    convert_seconds: float = 0.0


@dataclass
class ConversionContext:
    """What a conversion needs besides the model: labels, pixel normalization, data."""

    name: str  # model name, written into metadata
    labels: list[str]
    normalization: dict  # {"scale", "offset", "input_range"}: normalized = pixel * scale + offset
    calibration: "Calibration"  # noqa: F821  (targets.quantize.Calibration)
    int8_io: str = "uint8"  # input/output type of full-integer TFLite models: uint8 or int8
    qat_epochs: int = 2
    qat_learning_rate: float = 1e-5


class Target(Protocol):
    name: str
    quantize_modes: tuple[str, ...]
    default_quantize: str

    def convert(self, model, quantize: str, out_dir: Path, context: ConversionContext) -> Artifact:
        """Write the artifact for `model` under `out_dir`."""

    def predict(self, artifact: Artifact, images: np.ndarray) -> np.ndarray:
        """Class probabilities for uint8 `images` [n, h, w, 3], computed by the artifact's runtime."""

    def latency(self, artifact: Artifact, *, runs: int, warmup: int, batch: int, threads: int) -> dict:
        """Timing in a fresh process of the artifact's runtime: p50_ms, p90_ms and settings."""

    def describe(self, artifact: Artifact) -> dict:
        """Number types stored in the artifact (proof that a quantization happened)."""


def get(name: str) -> Target:
    from targets import REGISTRY
    from targets.errors import FactoryError

    if name not in REGISTRY:
        raise FactoryError(f"unknown target {name!r}: choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
