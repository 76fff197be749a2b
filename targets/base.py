"""What every target is: a table of modes, and convert / predict / time / describe.

A target turns a trained Keras model (RGB pixels in [0, 255], or a text model's int32 token
ids -> class probabilities) into artifact files and runs those files in their own runtime. A
new target is one module with a `Target` subclass plus one line in targets/registry.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from targets.errors import FactoryError


@dataclass(frozen=True)
class Mode:
    """One quantization mode of a target: the row of its table."""

    name: str
    min_agreement: float  # default parity threshold: top-1 agreement with Keras on the test split
    summary: str  # what it stores, for help texts and docs
    in_bench: bool = True  # measured by `factory bench` when no --quantize is given
    calibration: bool = False  # needs representative training images
    training: str | None = None  # a training step the model needs before converting
    search: bool = False  # searches on validation images for the smallest artifact reaching min_agreement
    text: bool = True  # offered for a text model (int32 token ids in: nothing to calibrate on the input)


QUANTIZATION_AWARE = "quantization-aware"  # the one training step a mode can need today
SMALLEST = "smallest"  # the mode that builds a target's other modes and keeps the smallest passing one


def smallest_mode(needs_calibration: bool) -> Mode:
    return Mode(SMALLEST, 0.99, "the smallest artifact of the modes above (those needing no training) that "
                "passes the agreement gate; the manifest lists every candidate", in_bench=False,
                calibration=needs_calibration, search=True)


@dataclass
class Artifact:
    target: str
    quantize: str
    path: Path  # the main file (or model.json for a folder of files)
    files: list[Path] = field(default_factory=list)  # every file written, main file included
    convert_seconds: float = 0.0
    search: dict | None = None  # what a searching mode tried and why it kept this artifact


@dataclass
class ConversionContext:
    """What a conversion needs besides the model."""

    name: str  # model name, written into metadata
    labels: list[str]
    # images: {"scale", "offset", "input_range"} (normalized = pixel * scale + offset, in the graph);
    # text: the tokenizer's contract (factory.tokenizer.WordPiece.contract), with "tokenizer"
    preprocessing: dict
    calibration: np.ndarray | None = None  # training examples (uint8 images, int32 token ids), for modes that calibrate
    validation: np.ndarray | None = None  # validation examples, for modes that search
    vocab_file: Path | None = None  # text models: the tokenizer's vocabulary, packed beside the labels
    # the agreement with Keras a mode's gate asks (a searching mode aims for it): the export's rule
    threshold: Callable[[Mode], float] = lambda mode: mode.min_agreement


class Target:
    name: str
    modes: tuple[Mode, ...]  # the first is the default

    def mode(self, name: str) -> Mode | None:
        return next((m for m in self.modes if m.name == name), None)

    def candidates(self, text: bool = False) -> list[Mode]:
        """The modes --quantize smallest chooses from: every one needing no training step (for a
        text model, every one offered for text)."""
        return [m for m in self.modes if m.name != SMALLEST and m.training is None and (m.text or not text)]

    def bench_modes(self) -> list[Mode]:
        return [m for m in self.modes if m.in_bench]

    def ready(self) -> str | None:
        """None when its runtime is installed, else what to install (checked before any work)."""
        return None

    def convert(self, model, mode: str, out_dir: Path, context: ConversionContext) -> Artifact:
        """Write the artifact for `model` under `out_dir`."""
        raise NotImplementedError

    def predict(self, artifact: Artifact, images: np.ndarray) -> np.ndarray:
        """Class probabilities for uint8 `images` [n, h, w, 3] (a text model: int32 token ids [n, length]),
        computed by the artifact's runtime."""
        raise NotImplementedError

    def latency(self, artifact: Artifact, *, runs: int, warmup: int = 5, batch: int = 1, threads: int = 1) -> dict:
        """Timing in a fresh process of the artifact's runtime: p50_ms, p90_ms and settings."""
        raise NotImplementedError

    def describe(self, artifact: Artifact) -> dict:
        """Number types stored in the artifact (proof that a quantization happened)."""
        raise NotImplementedError

    def converted_mode(self, name: str) -> Mode:
        """The mode `convert` builds by that name; smallest is a choice among them, not one."""
        mode = self.mode(name)
        if mode is None:
            raise FactoryError(f"unknown {self.name} --quantize {name!r}: choose one of "
                               + ", ".join(m.name for m in self.modes))
        if name == SMALLEST:
            raise FactoryError("--quantize smallest chooses among a target's converted modes: run it through the "
                               "pipeline (factory.pipeline.smallest), not Target.convert")
        return mode
