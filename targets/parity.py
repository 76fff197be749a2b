"""How far an artifact's predictions are from the Keras model's."""
from __future__ import annotations

import numpy as np


def compare(keras_probs: np.ndarray, artifact_probs: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 agreement and max |probability difference| vs Keras, and the artifact's accuracy."""
    keras_top1 = keras_probs.argmax(axis=1)
    artifact_top1 = artifact_probs.argmax(axis=1)
    return {
        "agreement": float(np.mean(keras_top1 == artifact_top1)),
        "max_abs_diff": float(np.max(np.abs(keras_probs - artifact_probs))),
        "accuracy": float(np.mean(artifact_top1 == labels)),
    }
