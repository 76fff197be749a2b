"""Feature extraction: the backbone stays frozen; only a new head is trained.

The frozen backbone is a fixed function, so it runs once per image and the head trains on
those features (kept in an on-disk cache, see factory.cache): the same result as training
the whole frozen graph, at a fraction of the cost. The exported model is still one graph.
"""
from __future__ import annotations

from factory.cache import FeatureCache
from factory.classifier import Classifier, freeze_backbone
from factory.data import Dataset
from factory.specs import TrainingSpec
from factory.strategies.session import TrainingSession
from factory.strategies.training import Phase, balanced_class_weights, fit


def train_head(classifier: Classifier, data: Dataset, spec: TrainingSpec, reporter, session: TrainingSession,
               features: FeatureCache | None) -> Phase:
    def run(backup_dir):
        task = reporter.start("backbone features (cached)" if features else "backbone features", total=2)
        extracted = {}
        for name, split in (("train", data.train), ("val", data.val)):
            extracted[name] = features.features(split.images) if features else classifier.features(split.images)
            reporter.advance(task)
        reporter.finish(task)
        if features:
            reporter.note(f"feature cache: {features.hits} hit(s), {features.misses} miss(es) in {features.folder}")
        return fit(
            classifier.head,
            extracted["train"], data.train.labels,
            (extracted["val"], data.val.labels),
            name="head",
            epochs=spec.epochs,
            learning_rate=spec.learning_rate,
            batch_size=spec.batch_size,
            patience=spec.patience,
            reporter=reporter,
            class_weight=class_weights(data, spec),
            seed=spec.seed,
            backup_dir=backup_dir,
        )

    return session.run("head", run)


def class_weights(data: Dataset, spec: TrainingSpec):
    return balanced_class_weights(data.train.labels, len(data.class_names)) if spec.class_weights else None


def train(classifier: Classifier, data: Dataset, spec: TrainingSpec, reporter, session: TrainingSession,
          features: FeatureCache | None = None) -> list[Phase]:
    freeze_backbone(classifier)
    return [train_head(classifier, data, spec, reporter, session, features)]
