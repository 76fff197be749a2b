"""The plain recipe the factory replaces, run on the same data in the same benchmark.

A Keras model with the backbone wrapped as a frozen `hub.KerasLayer`, a softmax Dense head,
`fit` for a fixed number of epochs (the frozen backbone runs on every image in every epoch;
no early stopping, no feature cache), then a plain float TFLite conversion. The backbone is
the benchmark's own, saved as a TF2 SavedModel with the TF Hub image convention (input in
[0, 1]), so the comparison is about the recipe, not the weights.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from factory.bench.memory import PeakMemory
from factory.strategies.training import ProgressCallback
from targets.tf_setup import keras, tf
from targets import base as targets, parity
from targets.tflite import run_interpreter

NAME = "baseline"
LABEL = "baseline: hub.KerasLayer + Dense, plain fit"


def hub_saved_model(classifier, folder: Path) -> str:
    """The classifier's backbone as a TF Hub style feature-vector SavedModel; returns its path."""
    if classifier.backbone.name.startswith("hub:"):
        return classifier.backbone.source
    size = classifier.backbone.input_size
    inputs = keras.Input((size, size, 3))
    features = classifier.feature_model(keras.layers.Rescaling(255.0)(inputs))
    tf.saved_model.save(keras.Model(inputs, features), str(folder))
    return str(folder)


def _unit_range(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle_seed: int | None = None):
    data = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(images), seed=shuffle_seed)
    return data.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)).prefetch(2)


def run(handle: str, config, input_size: int, out_dir: str, reporter) -> dict:
    """Train and convert the baseline on the benchmark's split (run in a fresh process: isolated.py)."""
    import tensorflow_hub as hub

    from factory import data as data_lib

    data = data_lib.load(config.data, input_size, limit=config.limit, seed=config.seed)
    keras.utils.set_random_seed(config.seed)
    with PeakMemory() as memory:
        start = time.perf_counter()
        model = keras.Sequential([
            keras.Input((input_size, input_size, 3)),
            hub.KerasLayer(handle, trainable=False),
            keras.layers.Dense(len(data.class_names), activation="softmax"),
        ])
        model.compile(keras.optimizers.Adam(config.learning_rate), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        train = _unit_range(data.train.images, data.train.labels, config.batch_size, shuffle_seed=config.seed)
        model.fit(train, validation_data=_unit_range(data.val.images, data.val.labels, config.batch_size),
                  epochs=config.epochs, verbose=0,
                  callbacks=[ProgressCallback(reporter, "baseline fit", config.epochs, len(train))])
        train_seconds = time.perf_counter() - start
    test_images = data.test.images.astype(np.float32) / 255.0
    keras_probs = model.predict(test_images, batch_size=64, verbose=0)

    start = time.perf_counter()
    path = Path(out_dir) / "baseline_float32.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    convert_seconds = time.perf_counter() - start
    report = parity.compare(keras_probs, run_interpreter(path, test_images), data.test.labels)
    artifact = targets.Artifact("tflite", "float32", path, [path])
    return {
        "strategy": NAME, "strategy_label": LABEL, "target": "tflite", "quantize": "float32", "status": "ok",
        "keras_accuracy": float(np.mean(keras_probs.argmax(1) == data.test.labels)),
        "train_seconds": round(train_seconds, 2), "epochs_run": config.epochs, **memory.as_dict(),
        **report, "bytes": path.stat().st_size, "convert_seconds": round(convert_seconds, 2),
        **config.timings(targets.get("tflite"), artifact),
    }
