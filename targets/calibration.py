"""Calibration data for full-integer conversions: a representative subset of training images."""
from __future__ import annotations

import numpy as np


def calibration_subset(images: np.ndarray, size: int, seed: int) -> np.ndarray:
    if len(images) <= size:
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), size, replace=False))]


def representative_dataset(images: np.ndarray):
    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate
