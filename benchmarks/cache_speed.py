"""Feature extraction with a warm feature cache vs running the frozen backbone every epoch.

Both train the same head for the same epochs on the same Fashion-MNIST subset, in one run,
side by side; prints and records wall times, their ratio and both test accuracies.

    python benchmarks/cache_speed.py [--limit 3000] [--input-size 96] [--epochs 10]
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory import backbones, cache, classifier, data as data_lib  # noqa: E402
from factory.progress import Silent  # noqa: E402
from factory.specs import BackboneSpec, DataSpec  # noqa: E402
from factory.strategies.feature_extraction import cached_features  # noqa: E402
from targets.tf_setup import keras  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cache_speed.json"


def accuracy(model, split) -> float:
    probs = np.concatenate([model.predict_on_batch(images) for images, _ in split.batches(64)])
    return float(np.mean(probs.argmax(1) == split.labels))


def fit(model, train, validation, epochs):
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=validation, epochs=epochs, verbose=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=3000)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    data = data_lib.load(DataSpec("fashion-mnist", limit=args.limit), args.input_size)
    backbone = backbones.resolve(BackboneSpec(input_size=args.input_size))

    # A: the plain way: the frozen backbone runs on every image in every epoch.
    keras.utils.set_random_seed(0)
    plain = classifier.build(backbone, len(data.class_names))
    start = time.perf_counter()
    fit(plain.model, data.train.dataset(32, shuffle_seed=0), data.val.dataset(32), args.epochs)
    plain_seconds = time.perf_counter() - start

    # B: warm cache (filled once beforehand, as a second build on the same data finds it).
    keras.utils.set_random_seed(0)
    cached = classifier.build(backbone, len(data.class_names))
    with tempfile.TemporaryDirectory() as folder, cache.open_store(cached, Path(folder) / "features") as store:
        cached_features(data, store, Silent(), Path(folder), seed=0)
        start = time.perf_counter()
        train, val = cached_features(data, store, Silent(), Path(folder), seed=0)
        fit(cached.head, train.dataset(32, shuffle_seed=0), val.dataset(32), args.epochs)
        cached_seconds = time.perf_counter() - start
        assert store.extracted == len(set(data.train.keys) | set(data.val.keys))  # all in the first call

    result = {
        "what": "feature extraction: frozen backbone every epoch vs warm feature cache",
        "data": {"source": "fashion-mnist", "limit": args.limit, "input_size": args.input_size, **data.sizes()},
        "epochs": args.epochs,
        "backbone_every_epoch": {"seconds": round(plain_seconds, 2), "test_accuracy": accuracy(plain.model, data.test)},
        "warm_cache": {"seconds": round(cached_seconds, 2), "test_accuracy": accuracy(cached.model, data.test)},
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }
    result["speedup"] = round(plain_seconds / cached_seconds, 1)
    result["accuracy_difference"] = round(
        result["warm_cache"]["test_accuracy"] - result["backbone_every_epoch"]["test_accuracy"], 4)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"backbone every epoch: {plain_seconds:7.1f} s, test accuracy {result['backbone_every_epoch']['test_accuracy']:.4f}")
    print(f"warm feature cache:   {cached_seconds:7.1f} s, test accuracy {result['warm_cache']['test_accuracy']:.4f}")
    print(f"speedup {result['speedup']}x, accuracy difference {result['accuracy_difference']:+.4f} -> {RESULTS}")


if __name__ == "__main__":
    main()
