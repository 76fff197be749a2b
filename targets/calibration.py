"""Calibration data for full-integer conversions: a representative subset of training images
(drawn by the data stage) fed to the converter one by one."""
from __future__ import annotations

import numpy as np


def representative_dataset(images: np.ndarray):
    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate
