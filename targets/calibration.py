"""Calibration data for full-integer conversions: a representative subset of training examples
(drawn by the data stage) fed to the converter one by one: images as float32 pixels, a text
model's token ids as they are (int32)."""
from __future__ import annotations

import numpy as np


def representative_dataset(examples: np.ndarray):
    dtype = np.float32 if examples.dtype == np.uint8 else examples.dtype

    def generate():
        for example in examples:
            yield [example[None].astype(dtype)]

    return generate
