"""How far an artifact's predictions are from the Keras model's, and the gate on that."""
from __future__ import annotations

import numpy as np

from targets.errors import FactoryError


def compare(keras_probs: np.ndarray, artifact_probs: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 agreement and max |probability difference| vs Keras, and the artifact's accuracy."""
    keras_top1 = keras_probs.argmax(axis=1)
    artifact_top1 = artifact_probs.argmax(axis=1)
    return {
        "agreement": float(np.mean(keras_top1 == artifact_top1)),
        "max_abs_diff": float(np.max(np.abs(keras_probs - artifact_probs))),
        "accuracy": float(np.mean(artifact_top1 == labels)),
    }


def gate(name: str, report: dict, threshold: float) -> float:
    """Raise if `report`'s agreement is below `threshold`; returns the threshold."""
    if report["agreement"] < threshold:
        raise FactoryError(
            f"{name} agrees with the Keras model on {report['agreement']:.3f} of the test images, below "
            f"--min-agreement {threshold}; choose a lighter quantization or lower --min-agreement"
        )
    return threshold
