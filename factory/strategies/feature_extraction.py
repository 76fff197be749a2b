"""Feature extraction: the backbone stays frozen; only a new head is trained.

The frozen backbone is a fixed function, so it runs once per image and the head trains on
those features (kept in an on-disk cache, see factory.cache): the same result as training
the whole frozen graph, at a fraction of the cost. The exported model is still one graph.
"""
from __future__ import annotations

from factory.cache import FeatureCache
from factory.classifier import Classifier, freeze_backbone
from factory.data import Dataset
from factory.strategies.session import TrainingSession
from factory.strategies.training import Phase, balanced_class_weights, fit


def train_head(classifier: Classifier, data: Dataset, recipe, reporter, session: TrainingSession) -> Phase:
    def run(backup_dir):
        cache = FeatureCache(classifier, recipe.cache_dir) if recipe.cache else None
        task = reporter.start("backbone features (cached)" if cache else "backbone features", total=2)
        features = {}
        for name, split in (("train", data.train), ("val", data.val)):
            features[name] = cache.features(split.images) if cache else classifier.features(split.images)
            reporter.advance(task)
        reporter.finish(task)
        if cache:
            reporter.note(f"feature cache: {cache.hits} hit(s), {cache.misses} miss(es) in {cache.folder}")
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
            class_weight=class_weights(data, recipe),
            seed=recipe.seed,
            backup_dir=backup_dir,
        )

    return session.run("head", run)


def class_weights(data: Dataset, recipe):
    return balanced_class_weights(data.train.labels, len(data.class_names)) if recipe.class_weights else None


def train(classifier: Classifier, data: Dataset, recipe, reporter, session: TrainingSession) -> list[Phase]:
    freeze_backbone(classifier)
    return [train_head(classifier, data, recipe, reporter, session)]
