"""How far an artifact's predictions are from the Keras model's."""
from __future__ import annotations

import numpy as np

from targets.errors import FactoryError

# Minimum top-1 agreement with the Keras model, by quantization, unless --min-agreement says.
# Measured on Fashion-MNIST / EfficientNet-Lite0 (see README): float16 >= 0.99, dynamic ~0.98,
# full int8 0.95-0.97, TF.js uint8 weights ~0.77 (the gate is meant to stop that one).
DEFAULT_MIN_AGREEMENT = {"float32": 0.99, "float16": 0.99, "dynamic": 0.97, "int8": 0.94, "qat": 0.94, "uint8": 0.94}


def compare(keras_probs: np.ndarray, artifact_probs: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 agreement and max |probability difference| vs Keras, and the artifact's accuracy."""
    keras_top1 = keras_probs.argmax(axis=1)
    artifact_top1 = artifact_probs.argmax(axis=1)
    return {
        "agreement": float(np.mean(keras_top1 == artifact_top1)),
        "max_abs_diff": float(np.max(np.abs(keras_probs - artifact_probs))),
        "accuracy": float(np.mean(artifact_top1 == labels)),
    }


def min_agreement_for(quantize: str, min_agreement: float | None) -> float:
    return DEFAULT_MIN_AGREEMENT.get(quantize, 0.99) if min_agreement is None else min_agreement


def gate(name: str, quantize: str, report: dict, min_agreement: float | None) -> float:
    """Raise if `report`'s agreement is below the threshold; returns the threshold used."""
    threshold = min_agreement_for(quantize, min_agreement)
    if report["agreement"] < threshold:
        raise FactoryError(
            f"{name} agrees with the Keras model on {report['agreement']:.3f} of the test images, below "
            f"--min-agreement {threshold}; choose a lighter quantization or lower --min-agreement"
        )
    return threshold
