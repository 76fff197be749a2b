"""The search a mixed-precision mode runs: how many of its ranked parts to keep in higher
precision, fewest first, until the artifact agrees with Keras on the validation images.

Keeping more parts in higher precision costs bytes and brings the artifact towards the float
model, so agreement grows with the count (up to noise): a bisection finds the smallest count
that reaches the target in a few trials. Only a count whose artifact was built and measured is
ever kept, so noise can cost bytes but never lets a candidate below the target through.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def agreement(reference_probs: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(reference_probs.argmax(1) == probs.argmax(1)))


def aim(target: float, images: int) -> float:
    """The validation agreement a search asks for so that the artifact also meets `target` on
    new images: `target` plus one standard error of an agreement measured on `images` images
    (510 images and a 0.99 target: 0.9944), capped at 1."""
    return min(1.0, target + (target * (1 - target) / images) ** 0.5)


def fewest(count: int, measure: Callable[[int], float], target: float) -> tuple[int, list[dict]]:
    """The smallest k in [0, count] whose `measure(k)` (an agreement) reaches `target`, and
    every trial as {"kept", "agreement"}. With none reaching it, `count` and its trials."""
    trials: list[dict] = []

    def passes(k: int) -> bool:
        trials.append({"kept": k, "agreement": round(measure(k), 4)})
        return trials[-1]["agreement"] >= target

    if passes(0):
        return 0, trials
    low, high = 0, count  # measure(low) is below the target; high is the answer if nothing smaller passes
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    if not any(t["kept"] == high for t in trials):
        passes(high)
    return high, trials
