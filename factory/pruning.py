"""Magnitude pruning (tensorflow-model-optimization): a training step after the strategy's
phases that zeroes the smallest weights of the backbone's convolutions, then trains the rest
to make up for them. A file's plain size does not change; its gzip size (what an app
download costs) falls, since runs of zeros compress to almost nothing.

Choices, and the tfmot traps they avoid (measured on this toolchain):
- pruned: every Conv2D (full and 1x1) of the backbone but the first, which sees the pixels
  and holds a few hundred weights. Depthwise kernels (3x3 per channel) and the classifier
  layer stay whole: they are small and carry much per weight.
- tfmot's default schedule updates the masks every 100 steps: a short run prunes nothing.
  Here sparsity rises from 0 to the target in up to `MASK_UPDATES` steps spread over the
  first two thirds of the run; the last third trains at the target sparsity.
- every weight but BatchNorm's trains, at the fine-tuning learning rate (BatchNorm stays
  frozen and in inference mode); no early stopping, which would restore an earlier, denser
  epoch. The masks are applied once more at the end: the last optimizer step moves zeroed
  weights off zero.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from factory.classifier import Classifier, is_batch_norm
from factory.data import Dataset
from factory.evaluation import evaluate
from factory.specs import TrainingSpec
from factory.strategies import feature_extraction
from factory.strategies.session import TrainingSession
from factory.strategies.training import Phase, augmenter, fit
from targets.errors import FactoryError
from targets.tf_setup import keras

MASK_UPDATES = 10  # at most this many steps grow the masks, from sparsity 0 to the target


def _sparsity_api():
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras


def prunable_layers(classifier: Classifier) -> list:
    """The backbone's Conv2D layers (not depthwise), bottom to top, without the first; a
    backbone without any (a hub: backbone is one opaque layer) is refused."""
    convolutions = [layer for layer in classifier.backbone_layers()
                    if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D)]
    if len(convolutions) < 2:
        raise FactoryError(f"--prune needs a backbone built as a Keras graph of Conv2D layers; "
                           f"{classifier.backbone.name} has {len(convolutions)} (a hub: backbone is one opaque layer)")
    return convolutions[1:]


def schedule_steps(total_steps: int) -> tuple[int, int]:
    """(mask update frequency, last update step): up to `MASK_UPDATES` updates, evenly spaced
    within the first 2/3 of the run's steps (tfmot counts them from 1)."""
    ramp = max(1, 2 * total_steps // 3)
    updates = min(MASK_UPDATES, ramp)
    return ramp // updates, ramp // updates * updates


def prune(classifier: Classifier, data: Dataset, spec: TrainingSpec, reporter, session: TrainingSession) -> Phase:
    """Prune `classifier`'s model in place to `spec.prune` sparsity (see the module notes)."""
    layers = prunable_layers(classifier)
    sparsity = _sparsity_api()
    batch = feature_extraction.global_batch(spec)
    frequency, end_step = schedule_steps(spec.prune_epochs * math.ceil(len(data.train) / batch))
    schedule = sparsity.PolynomialDecay(0.0, spec.prune, begin_step=0, end_step=end_step, frequency=frequency)
    chosen = {id(layer) for layer in layers}
    wrapped = keras.models.clone_model(  # the same layer objects: training it trains the classifier
        classifier.model, clone_function=lambda layer: (
            sparsity.prune_low_magnitude(layer, pruning_schedule=schedule) if id(layer) in chosen else layer))
    for layer in classifier.backbone_layers():
        layer.trainable = not is_batch_norm(layer)
    name = f"prune to {spec.prune:.0%} sparsity"

    def train(backup_dir):
        phase = fit(wrapped, data.train.dataset(batch, shuffle_seed=spec.seed,
                                                augment=augmenter(spec.seed) if spec.augments else None),
                    None, examples=len(data.train), unit=data.train.unit, name=name, epochs=spec.prune_epochs,
                    learning_rate=spec.backbone_learning_rate, global_batch=batch, patience=spec.patience,
                    reporter=reporter, class_weight=feature_extraction.class_weights(data, spec),
                    backup_dir=backup_dir, callbacks=(sparsity.UpdatePruningStep(),))
        for wrapper in wrapped.layers:  # the last step moved zeroed weights (a resumed, finished fit: every one)
            for weight, mask, _ in getattr(wrapper, "pruning_vars", ()):
                weight.assign(weight * mask)
        return dataclasses.replace(phase, best_val_accuracy=validation_accuracy(classifier, data))

    return session.run(name, train)


def validation_accuracy(classifier: Classifier, data: Dataset) -> float:
    """The whole model's accuracy on the validation split (not the cached features')."""
    return float(np.mean(evaluate(classifier.model, data.val).argmax(1) == data.val.labels))


def summary(classifier: Classifier, target: float, val_accuracy: tuple[float, float] | None = None) -> dict | None:
    """What pruning left, measured on the weights: the zeros among the pruned kernels and in the
    whole model, and `val_accuracy` (the model's validation accuracy before and after pruning);
    None when the spec does not prune (`target` 0)."""
    if not target:
        return None
    kernels = [layer.kernel.numpy() for layer in prunable_layers(classifier)]
    pruned = sum(k.size for k in kernels)
    zeros = sum(int(np.count_nonzero(k == 0)) for k in kernels)
    before, after = val_accuracy or (None, None)
    return {"target_sparsity": target, "sparsity": zeros / pruned, "pruned_layers": len(kernels),
            "pruned_weights": pruned, "zero_share_of_model": zeros / classifier.model.count_params(),
            "val_accuracy_before": before, "val_accuracy_after": after}
