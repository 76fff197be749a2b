"""Feature extraction: the backbone stays frozen; only a new head is trained.

The frozen backbone is a fixed function, so it runs once per image: its features go to the
per-image cache (factory.cache), only images the cache lacks are extracted (split between
the workers of a multi-worker build), and the head trains on the features streamed back
from disk. The same result as training the whole frozen graph, at a fraction of the cost;
the exported model is still one graph.
"""
from __future__ import annotations

from pathlib import Path

from factory import cache, distributed
from factory.classifier import Classifier, freeze_backbone
from factory.data import Dataset
from factory.specs import TrainingSpec
from factory.strategies.session import TrainingSession
from factory.strategies.training import Phase, balanced_class_weights, fit


def cached_features(data: Dataset, store: cache.FeatureStore, reporter, folder: Path, seed: int,
                    with_test: bool = False) -> tuple[cache.FeatureSplit, cache.FeatureSplit]:
    """The train and validation features as flat files in `folder`, extracting what the cache
    lacks (the test split's too with `with_test`: a frozen backbone's model is evaluated on them)."""
    cluster = distributed.cluster()
    splits = (("train", data.train), ("validation", data.val)) + ((("test", data.test),) if with_test else ())
    lacked_before = len(store.lacked)
    for name, split in splits:
        cache.extract(split, store, reporter, description=f"backbone features: {name}", worker=cluster.index,
                      workers=cluster.workers)
    if cluster.workers > 1:
        cluster.barrier()  # every worker's share is in the cache, if its folder is shared
        for name, split in splits:
            cache.extract(split, store, reporter, description=f"backbone features: {name} "
                          "(other workers' share: is --cache-dir shared?)")
    distinct = len({key for _, split in splits for key in split.keys})
    known = distinct - (len(store.lacked) - lacked_before)  # a later call finds the earlier one's work cached
    reporter.note(f"feature cache: {known:,} of {distinct:,} {data.train.unit} were cached, "
                  f"{store.extracted:,} extracted by this process ({store.folder})")
    return (cache.write_split(data.train, store, folder / "train.f32", seed),
            cache.write_split(data.val, store, folder / "val.f32", seed + 1))


def train_head(classifier: Classifier, data: Dataset, spec: TrainingSpec, reporter, session: TrainingSession,
               store: cache.FeatureStore) -> Phase:
    def run(backup_dir):
        with cache.scratch_folder(store.folder) as scratch:
            train, val = cached_features(data, store, reporter, Path(scratch), spec.seed, with_test=spec.evaluates_on_features)
            batch = global_batch(spec)
            return fit(
                classifier.head,
                train.dataset(batch, shuffle_seed=spec.seed), val.dataset(batch),
                examples=len(train),
                unit=data.train.unit,
                name="head",
                epochs=spec.epochs,
                learning_rate=spec.learning_rate,
                global_batch=batch,
                patience=spec.patience,
                reporter=reporter,
                class_weight=class_weights(data, spec),
                backup_dir=backup_dir,
            )

    return session.run("head", run)


def global_batch(spec: TrainingSpec) -> int:
    return spec.batch_size * distributed.cluster().workers


def class_weights(data: Dataset, spec: TrainingSpec):
    return balanced_class_weights(data.train.labels, len(data.class_names)) if spec.class_weights else None


def train(classifier: Classifier, data: Dataset, spec: TrainingSpec, reporter, session: TrainingSession,
          store: cache.FeatureStore) -> list[Phase]:
    freeze_backbone(classifier)
    return [train_head(classifier, data, spec, reporter, session, store)]
