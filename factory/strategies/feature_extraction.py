"""Feature extraction: the backbone stays frozen; only a new head is trained.

The frozen backbone is a fixed function, so it runs once per image and the head trains on
those features: the same result as training the whole frozen graph, at a fraction of the cost.
"""
from __future__ import annotations

from factory.classifier import Classifier, freeze_backbone
from factory.data import Dataset
from factory.strategies.training import Phase, fit


def train_head(classifier: Classifier, data: Dataset, recipe, reporter) -> Phase:
    task = reporter.start("extracting features", total=3)
    features = {}
    for name, split in (("train", data.train), ("val", data.val)):
        features[name] = classifier.features(split.images)
        reporter.advance(task)
    reporter.finish(task)
    return fit(
        classifier.head,
        features["train"], data.train.labels,
        (features["val"], data.val.labels),
        name="head",
        epochs=recipe.epochs,
        learning_rate=recipe.learning_rate,
        batch_size=recipe.batch_size,
        patience=recipe.patience,
        reporter=reporter,
    )


def train(classifier: Classifier, data: Dataset, recipe, reporter) -> list[Phase]:
    freeze_backbone(classifier)
    return [train_head(classifier, data, recipe, reporter)]
