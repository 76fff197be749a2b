"""A model's probabilities on a split: from pixels streamed through the data stage, or, for a
model whose backbone is the frozen extractor of a feature store, from the cached features."""
from __future__ import annotations

import numpy as np

from factory import cache as cache_lib, classifier as classifier_lib
from factory.progress import Reporter, Silent


def predictions(predict, split, reporter: Reporter = Silent(), description: str = "evaluating on the test split",
                batch_size: int = 64) -> np.ndarray:
    """`predict` (uint8 images -> probabilities, see classifier.inference_fn) on every example of
    `split`, batch by batch."""
    task = reporter.start(description, total=len(split), unit=split.unit)
    probs = []
    for images, _ in split.batches(batch_size):
        probs.append(predict(images))
        reporter.advance(task, len(images))
    reporter.finish(task)
    return np.concatenate(probs)


def evaluate(model, split, reporter: Reporter = Silent()) -> np.ndarray:
    """The model's probabilities on every example of `split`."""
    return predictions(classifier_lib.inference_fn(model), split, reporter)


def evaluate_on_features(head, store: cache_lib.FeatureStore, split, reporter: Reporter = Silent(),
                         batch_size: int = 2048) -> np.ndarray:
    """The probabilities of a model whose backbone is `store`'s frozen extractor, from cached features."""
    cache_lib.extract(split, store, reporter, description="backbone features")  # none missing, normally
    predict = classifier_lib.inference_fn(head)
    return np.concatenate([predict(store.vectors(split.keys[start:start + batch_size]))
                           for start in range(0, len(split), batch_size)])
