"""The plain recipe the factory replaces, run on the same data in the same benchmark.

Text: TF-IDF features (words and word pairs) and a logistic regression, the classic baseline a
pretrained encoder must beat; it trains in seconds and has no artifact to convert.

Images:
A Keras model with the backbone wrapped as a frozen `hub.KerasLayer`, a softmax Dense head,
`fit` for a fixed number of epochs (the frozen backbone runs on every image in every epoch;
no early stopping, no feature cache), then a plain float TFLite conversion. The backbone is
the benchmark's own, saved as a TF2 SavedModel with the TF Hub image convention (input in
[0, 1]), so the comparison is about the recipe, not the weights. The model scales pixels to
[0, 1] in its first layer, so it is converted and measured by the same pipeline stages.
"""
from __future__ import annotations

import time
from pathlib import Path

from factory import classifier as classifier_lib, pipeline
from factory.evaluation import evaluate
from factory.bench.memory import PeakMemory
from factory.strategies.training import ProgressCallback
from targets import registry
from targets.base import ConversionContext
from targets.tf_setup import keras, tf

NAME = "baseline"
LABEL = "baseline: hub.KerasLayer + Dense, plain fit"
TFIDF_LABEL = "baseline: TF-IDF + logistic regression"
UNIT_RANGE = {"scale": 1 / 255, "offset": 0.0, "input_range": [0, 255]}


def tfidf(prepared: pipeline.Prepared) -> dict:
    """TF-IDF (1-2 word grams, sublinear term frequency) + logistic regression on the text split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    data = prepared.data
    with PeakMemory() as memory:
        start = time.perf_counter()
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                              LogisticRegression(C=10.0, max_iter=2000))
        model.fit(data.train.items, data.train.labels)
        train_seconds = time.perf_counter() - start
    accuracy = float((model.predict(data.test.items) == data.test.labels).mean())
    return {"strategy": NAME, "strategy_label": TFIDF_LABEL, "target": "scikit-learn", "quantize": "-",
            "status": "ok", "keras_accuracy": accuracy, "accuracy": accuracy, "train_seconds": round(train_seconds, 2),
            **memory.as_dict()}


def hub_saved_model(prepared: pipeline.Prepared, folder: Path) -> str:
    """The benchmark's backbone as a TF Hub style feature-vector SavedModel; returns its path."""
    backbone = prepared.backbone
    if backbone.name.startswith("hub:"):
        return backbone.source
    classifier = classifier_lib.build(backbone, len(prepared.data.class_names))
    size = backbone.input_size
    inputs = keras.Input((size, size, 3))
    features = classifier.feature_model(keras.layers.Rescaling(255.0)(inputs))
    tf.saved_model.save(keras.Model(inputs, features), str(folder))
    return str(folder)


def run(handle: str, spec, out_dir: str, reporter) -> dict:
    """Train and convert the baseline on the benchmark's split (run in a fresh process: isolated.py)."""
    import tensorflow_hub as hub

    prepared = pipeline.prepare(spec.data, spec.backbone)
    data, training, size = prepared.data, spec.training, prepared.backbone.input_size
    keras.utils.set_random_seed(training.seed)
    with PeakMemory() as memory:
        start = time.perf_counter()
        model = keras.Sequential([
            keras.Input((size, size, 3)),
            keras.layers.Rescaling(UNIT_RANGE["scale"]),
            hub.KerasLayer(handle, trainable=False),
            keras.layers.Dense(len(data.class_names), activation="softmax"),
        ])
        model.compile(keras.optimizers.Adam(training.learning_rate), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(data.train.dataset(training.batch_size, shuffle_seed=training.seed),
                  validation_data=data.val.dataset(training.batch_size), epochs=training.epochs, verbose=0,
                  callbacks=[ProgressCallback(reporter, "baseline fit", training.epochs, len(data.train),
                                              training.batch_size)])
        train_seconds = time.perf_counter() - start
    trained = pipeline.TrainedModel(model, UNIT_RANGE, evaluate(model, data.test), data.test.labels,
                                    spec=training)
    tflite = registry.get("tflite")
    float32 = tflite.mode("float32")
    folder = Path(out_dir) / NAME
    folder.mkdir(parents=True, exist_ok=True)
    context = ConversionContext(NAME, data.class_names, UNIT_RANGE)
    artifact = pipeline.convert(trained, prepared, tflite, float32, folder, context, spec.export)
    report = pipeline.verify(trained, prepared, tflite, float32, artifact, spec.export)
    return {
        "strategy": NAME, "strategy_label": LABEL, "target": "tflite", "quantize": "float32", "status": "ok",
        "keras_accuracy": trained.test_accuracy, "train_seconds": round(train_seconds, 2),
        "epochs_run": training.epochs, **memory.as_dict(),
        "agreement": report.agreement, "max_abs_diff": report.max_abs_diff, "accuracy": report.accuracy,
        "bytes": report.artifact.path.stat().st_size, "convert_seconds": report.artifact.convert_seconds,
        **spec.timings(tflite, report.artifact),
    }
