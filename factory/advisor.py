"""Strategy advisor: a cheap probe on frozen features, then a recommendation with its evidence.

The probe trains a linear head on cached backbone features with 25%, 50% and 100% of the
training split (a learning curve) and counts images per class. The rules follow the usual
transfer-learning advice: little data, or frozen features that already separate the classes,
favour feature extraction; a learning curve still climbing, with enough images per class,
says the features are not yet adapted to this domain and fine-tuning the top blocks pays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from factory.cache import FeatureSplit
from targets.tf_setup import keras

FRACTIONS = (0.25, 0.5, 1.0)
MIN_PER_CLASS_TO_FINE_TUNE = 50
SEPARABLE_ACCURACY = 0.97  # linear probe this good: fine-tuning has little to add
CLIMBING = 0.01  # accuracy gained from 50% to 100% of the data that counts as "still climbing"


@dataclass
class Advice:
    strategy: str  # "feature-extraction" or "fine-tune"
    unfreeze_blocks: int | None
    reasons: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def probe(train: FeatureSplit, val: FeatureSplit, num_classes: int, *, seed: int) -> dict:
    """The evidence: a learning curve of a linear probe on frozen features."""
    train_x, val_x = train.array(), val.array()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_x))
    curve = {}
    for fraction in FRACTIONS:
        keep = order[: max(num_classes, int(fraction * len(order)))]
        curve[fraction] = _linear_probe(train_x[keep], train.labels[keep], val_x, val.labels, num_classes, seed)
    counts = np.bincount(train.labels, minlength=num_classes)
    return {
        "learning_curve": {f"{int(f * 100)}%": round(a, 4) for f, a in curve.items()},
        "probe_accuracy": round(curve[1.0], 4),
        "gain_last_half": round(curve[1.0] - curve[0.5], 4),
        "images_per_class_min": int(counts.min()),
        "images_per_class_median": float(np.median(counts)),
        "classes": num_classes,
    }


def _linear_probe(x, y, val_x, val_y, num_classes: int, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(num_classes, activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, validation_data=(val_x, val_y), epochs=40, batch_size=32, verbose=0, callbacks=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)])
    return float(model.evaluate(val_x, val_y, verbose=0)[1])


def recommend(evidence: dict) -> Advice:
    per_class = evidence["images_per_class_min"]
    accuracy, gain = evidence["probe_accuracy"], evidence["gain_last_half"]
    if per_class < MIN_PER_CLASS_TO_FINE_TUNE:
        return Advice("feature-extraction", None, [
            f"only {per_class} training images in the smallest class (< {MIN_PER_CLASS_TO_FINE_TUNE}): "
            "fine-tuning would overfit"], evidence)
    if accuracy >= SEPARABLE_ACCURACY:
        return Advice("feature-extraction", None, [
            f"a linear probe on frozen features already reaches {accuracy:.3f} (>= {SEPARABLE_ACCURACY})"], evidence)
    if gain >= CLIMBING:
        blocks = 2 if per_class < 200 else 3 if per_class < 1000 else 5
        return Advice("fine-tune", blocks, [
            f"the linear probe is at {accuracy:.3f} and still gained {gain:+.3f} from 50% to 100% of the data: "
            "the frozen features are not adapted to this domain",
            f"{per_class}+ images per class support unfreezing the top {blocks} blocks at a low learning rate",
        ], evidence)
    return Advice("feature-extraction", None, [
        f"the linear probe is at {accuracy:.3f} and flat ({gain:+.3f} from 50% to 100% of the data): "
        "more adaptation is unlikely to pay for its cost"], evidence)
