"""Fine-tuning: train the head first, then unfreeze the top of the backbone at a lower rate.

Phase 1 is feature extraction (a random head's large gradients would wreck the pretrained
features). Phase 2 unfreezes the top `recipe.unfreeze` weighted layers (None: all), keeps every
BatchNorm frozen and in inference mode, and trains at `recipe.fine_tune_learning_rate` with
early stopping that restores the best weights.
"""
from __future__ import annotations

from factory.classifier import Classifier, unfreeze_top
from factory.data import Dataset
from factory.errors import FactoryError
from factory.strategies import feature_extraction
from factory.strategies.training import Phase, fit


def train(classifier: Classifier, data: Dataset, recipe, reporter) -> list[Phase]:
    phases = feature_extraction.train(classifier, data, recipe, reporter)
    unfrozen = unfreeze_top(classifier, recipe.unfreeze)
    if not unfrozen:
        raise FactoryError("--unfreeze 0 leaves nothing to fine-tune; use --strategy feature-extraction")
    phases.append(
        fit(
            classifier.model,
            data.train.images, data.train.labels,
            (data.val.images, data.val.labels),
            name=f"fine-tune top {len(unfrozen)}",
            epochs=recipe.fine_tune_epochs,
            learning_rate=recipe.fine_tune_learning_rate,
            batch_size=recipe.batch_size,
            patience=recipe.patience,
            reporter=reporter,
        )
    )
    return phases
