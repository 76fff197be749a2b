"""Every quantize mode of both targets on a genuinely trained small CNN, run in the real runtimes."""
import dataclasses
import gzip
import json
import os
import subprocess
import zipfile

import numpy as np
import pytest

from factory import quantization_aware
from factory.quantization_aware import quantization_aware_model
from targets import parity, registry, tflite, tflite_metadata
from targets.base import SMALLEST, ConversionContext
from targets.errors import FactoryError
from targets.tf_setup import keras
from targets.tfjs import node_ready

REGISTRY = {name: registry.get(name) for name in registry.names()}

NORMALIZATION = {"scale": 1 / 128, "offset": -127 / 128, "input_range": [0, 255]}


@pytest.fixture(scope="module")
def digits_model():
    """A small CNN with the factory's input contract (pixels in, normalization in the graph),
    BatchNorm and a frozen first block, trained for real on sklearn digits."""
    from factory import data
    from factory.specs import DataSpec

    digits = data.load(DataSpec("digits"), 32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="normalize")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(8, 1, name="project")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.train.load_images(), digits.train.labels, epochs=15, batch_size=32, verbose=0)
    model.get_layer("conv1").trainable = False
    probs = model.predict(digits.test.load_images(), verbose=0)
    assert np.mean(probs.argmax(1) == digits.test.labels) > 0.8
    context = ConversionContext(name="digits", labels=digits.class_names, preprocessing=NORMALIZATION,
                                calibration=digits.train.sample(100, seed=0), validation=digits.val.load_images())
    return model, digits, probs, context


def model_for(mode, digits_model):
    """The model a mode converts: QAT first trains a quantization-aware copy (a training step)."""
    model, digits, _, context = digits_model
    if mode != "qat":
        return model
    return quantization_aware.train(model, digits.train, digits.val, context.calibration, epochs=2,
                                    learning_rate=1e-4, batch_size=32)


@pytest.mark.parametrize("mode", [m.name for m in tflite.MODES if m.name != SMALLEST])
def test_tflite_mode_converts_runs_and_agrees(digits_model, tmp_path, mode):
    model, digits, keras_probs, context = digits_model
    target = REGISTRY["tflite"]
    artifact = target.convert(model_for(mode, digits_model), mode, tmp_path, context)
    report = parity.compare(keras_probs, target.predict(artifact, digits.test.load_images()), digits.test.labels)
    parity.gate(mode, report, target.mode(mode).min_agreement)  # raises below the default threshold
    assert report["accuracy"] > 0.75
    types = target.describe(artifact)["tensor_types"]
    if mode in ("int8", "qat"):
        assert types["input"] == types["output"] == "uint8" and "float32" not in types["tensors"]
    if mode == "int16x8":
        assert types["input"] == "float32" and {"int16", "int8"} <= set(types["tensors"])
    if mode == "mixed":
        assert types["input"] == "float32" and "int8" in types["tensors"]
    if mode == "float32":
        assert report["max_abs_diff"] < 1e-4
    timing = target.latency(artifact, runs=5, warmup=1)
    assert timing["p50_ms"] > 0 and timing["threads"] == 1


def test_verification_of_a_large_test_split_runs_on_an_aligned_stratified_sample(digits_model, tmp_path):
    from factory import pipeline
    from factory.specs import BackboneSpec, DataSpec, ExportSpec

    model, digits, keras_probs, context = digits_model
    target = REGISTRY["tflite"]
    artifact = target.convert(model, "float32", tmp_path, context)
    trained = pipeline.TrainedModel(model, NORMALIZATION, keras_probs, digits.test.labels, spec=None)
    prepared = pipeline.Prepared(DataSpec("digits"), BackboneSpec(), None, digits)
    mode = target.mode("float32")
    sampled = pipeline.verify(trained, prepared, target, mode, artifact, ExportSpec(verify_images=100))
    assert len(digits.test) > 100 and sampled.verified_images == 100
    assert sampled.agreement >= 0.99 and sampled.max_abs_diff < 1e-4  # Keras's rows are those same images
    whole = pipeline.verify(trained, prepared, target, mode, artifact, ExportSpec())
    assert whole.verified_images == len(digits.test) and whole.accuracy > 0.75
    assert abs(sampled.accuracy - whole.accuracy) < 0.1  # every class in it, in proportion


def test_int8_is_smaller_than_float32(digits_model, tmp_path):
    model, _, _, context = digits_model
    target = REGISTRY["tflite"]
    sizes = {m: target.convert(model, m, tmp_path, context).path.stat().st_size for m in ("float32", "int8", "float16")}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]


def test_qat_keeps_batchnorm_frozen_and_trains_the_rest(digits_model):
    model = digits_model[0]
    quantized = quantization_aware_model(model)
    trainable = {w.name.split("/")[0] for w in quantized.trainable_weights}
    assert not any("bn" in name for name in trainable)
    assert {"conv1", "dw", "project", "classifier"} <= {n.replace("quant_", "") for n in trainable}


def test_unquantized_file_is_caught(digits_model, tmp_path):
    model, _, _, context = digits_model
    artifact = REGISTRY["tflite"].convert(model, "float32", tmp_path, context)
    with pytest.raises(FactoryError, match="did not quantize as asked"):
        tflite.check_quantized(artifact.path, "int8")


def test_parity_gate_names_the_artifact_and_threshold():
    keras_probs = np.eye(4)[[0, 1, 2, 3]]
    artifact_probs = np.eye(4)[[0, 1, 2, 0]]
    report = parity.compare(keras_probs, artifact_probs, np.array([0, 1, 2, 3]))
    assert report["agreement"] == 0.75
    int8 = REGISTRY["tflite"].mode("int8").min_agreement
    with pytest.raises(FactoryError, match="tflite int8 agrees with the Keras model on 0.750 .* --min-agreement 0.94"):
        parity.gate("tflite int8", report, int8)
    assert parity.gate("tflite int8", report, 0.7) == 0.7


def test_tflite_metadata_carries_labels_and_normalization(digits_model, tmp_path):
    model, digits, _, context = digits_model
    path = REGISTRY["tflite"].convert(model, "int8", tmp_path, context).path
    assert tflite_metadata.read_labels(path) == digits.class_names
    metadata = tflite_metadata.read_metadata(path)
    assert metadata[4:8] == b"M001" and b"labels.txt" in metadata and b"image" in metadata
    assert zipfile.is_zipfile(path)


MEDIAPIPE_PYTHON = os.path.join(os.path.dirname(__file__), "..", ".venv-mediapipe", "bin", "python")


@pytest.mark.skipif(not os.path.exists(MEDIAPIPE_PYTHON) and not os.environ.get("CI"),
                    reason="MediaPipe lives in .venv-mediapipe (made by .ci/run): it cannot share TF's venv")
@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_artifact_works_as_is_in_mediapipe_image_classifier(digits_model, tmp_path, mode):
    model, digits, keras_probs, context = digits_model
    path = REGISTRY["tflite"].convert(model, mode, tmp_path, context).path
    images = digits.test.load_images()[:40]
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "classify.py"
    script.write_text(
        "import json, sys, numpy as np, mediapipe as mp\n"
        "from mediapipe.tasks import python as mpt\n"
        "from mediapipe.tasks.python import vision\n"
        "options = vision.ImageClassifierOptions(base_options=mpt.BaseOptions(model_asset_path=sys.argv[1]), max_results=1)\n"
        "with vision.ImageClassifier.create_from_options(options) as classifier:\n"
        "    names = [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im)))"
        ".classifications[0].categories[0].category_name for im in np.load(sys.argv[2])]\n"
        "print(json.dumps(names))\n"
    )
    result = subprocess.run([MEDIAPIPE_PYTHON, str(script), str(path), str(tmp_path / "images.npy")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    names = json.loads(result.stdout.strip().splitlines()[-1])
    expected = [digits.class_names[i] for i in tflite.run_interpreter(path, images).argmax(1)]
    assert np.mean(np.array(names) == np.array(expected)) >= 0.95
    keras_names = [digits.class_names[i] for i in keras_probs[:40].argmax(1)]
    assert np.mean(np.array(names) == np.array(keras_names)) >= 0.9


requires_node = pytest.mark.skipif(node_ready() is not None and not os.environ.get("CI"), reason=str(node_ready()))


@requires_node
@pytest.mark.parametrize("mode", ["float32", "float16", "uint8"])
def test_tfjs_mode_runs_in_node_and_agrees(digits_model, tmp_path, mode):
    model, digits, keras_probs, context = digits_model
    target = REGISTRY["tfjs"]
    artifact = target.convert(model, mode, tmp_path, context)
    report = parity.compare(keras_probs, target.predict(artifact, digits.test.load_images()), digits.test.labels)
    assert report["agreement"] >= (0.99 if mode != "uint8" else 0.9)
    stored = target.describe(artifact)["weight_types"]
    assert (mode in stored) if mode != "float32" else stored == ["float32"]
    meta = json.loads(artifact.path.read_text())["userDefinedMetadata"]["edgefactory"]
    assert meta["labels"] == digits.class_names and meta["input"]["pixel_range"] == [0, 255]
    timing = target.latency(artifact, runs=5, warmup=1)
    assert timing["backend"] == "wasm" and timing["p50_ms"] > 0


def test_qat_on_a_hub_backbone_is_refused_in_one_line(tmp_path):
    from factory import backbones, classifier
    from factory.specs import BackboneSpec
    from targets.tf_setup import tf

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    tf.saved_model.save(keras.Model(inputs, features), str(tmp_path / "saved"))
    model = classifier.build(backbones.resolve(BackboneSpec(f"hub:{tmp_path / 'saved'}", 32)), 3).model
    with pytest.raises(FactoryError, match="quantization-aware training cannot wrap this model.*--quantize int8"):
        quantization_aware.quantization_aware_model(model)


def test_qat_mode_refuses_a_model_that_was_not_trained_for_it(digits_model, tmp_path):
    model, _, _, context = digits_model
    with pytest.raises(FactoryError, match="quantization-aware model"):
        REGISTRY["tflite"].convert(model, "qat", tmp_path, context)
    assert not list(tmp_path.iterdir())


# --- compressed modes that search: mixed, and smallest ----------------------------------------

EXACT = 1.0  # a target only a float-faithful artifact meets: forces the searches past plain int8 / uint8


def _searched(digits_model, target_name, tmp_path):
    model, digits, _, context = digits_model
    context = dataclasses.replace(context, threshold=lambda mode: EXACT)
    target = REGISTRY[target_name]
    artifact = target.convert(model, "mixed", tmp_path, context)
    validation_agreement = parity.compare(model.predict(context.validation, verbose=0),
                                          target.predict(artifact, context.validation), digits.val.labels)["agreement"]
    return artifact, artifact.search, validation_agreement


def _check_fewest(record):
    """The kept count is the smallest tried that reached the target, and every smaller one failed."""
    trials = {t["kept"]: t["agreement"] for t in record["trials"]}
    kept = min(k for k, a in trials.items() if a >= record["aim"])
    assert record["trials"][0]["kept"] == 0
    assert all(a < record["aim"] for k, a in trials.items() if k < kept)
    return kept


def test_tflite_mixed_keeps_the_fewest_float_ops_that_reach_the_target(digits_model, tmp_path):
    artifact, record, validation_agreement = _searched(digits_model, "tflite", tmp_path)
    assert record["target_agreement"] == EXACT and record["reached"]
    kept = _check_fewest(record)  # on this small CNN plain int8 often suffices: kept 0 (tests/test_compression.py
    assert kept == len(record["float_ops"]) <= record["ops"]  # searches EfficientNet-Lite0, where it does not)
    assert validation_agreement == record["validation_agreement"] == EXACT  # the file written is the one measured
    assert record["worst_ops"][0]["rmse_per_scale"] >= record["worst_ops"][-1]["rmse_per_scale"] > 0


def test_tfjs_mixed_stores_the_searched_tensors_in_float16_and_the_rest_uint8(digits_model, tmp_path):
    artifact, record, validation_agreement = _searched(digits_model, "tfjs", tmp_path)
    assert record["reached"]
    kept = _check_fewest(record)
    assert kept == len(record["float16_tensors"]) <= record["tensors"]
    assert validation_agreement == record["validation_agreement"] == EXACT
    weights = [w for g in json.loads(artifact.path.read_text())["weightsManifest"] for w in g["weights"]]
    stored = {w["name"]: w.get("quantization", {}).get("dtype") for w in weights if w["dtype"] == "float32"}
    assert {n for n, dtype in stored.items() if dtype == "float16"} == set(record["float16_tensors"])
    assert {dtype for n, dtype in stored.items() if n not in record["float16_tensors"]} == {"uint8"}


@pytest.mark.parametrize("answer", [0, 1, 37, 63, 64])
def test_search_bisects_to_the_fewest_kept_that_reach_the_target(answer):
    from targets import search

    measured = []

    def measure(kept):  # agreement grows with what is kept, as in the real searches
        measured.append(kept)
        return 0.995 if kept >= answer else 0.9 + kept / 1000

    kept, trials = search.fewest(64, measure, 0.99)
    assert kept == answer and len(measured) <= 8  # log2(64) + 2 trials, never all 65
    assert [t["kept"] for t in trials] == measured and all(t["agreement"] < 0.99 for t in trials if t["kept"] < kept)


def test_search_aims_above_the_target_by_the_validation_split_noise():
    from targets import search

    assert search.aim(0.99, 510) == pytest.approx(0.99 + (0.99 * 0.01 / 510) ** 0.5)
    assert search.aim(0.99, 100) > search.aim(0.99, 10_000) > 0.99 and search.aim(1.0, 50) == 1.0


def test_search_without_an_answer_returns_everything_kept_and_says_so():
    from targets import search

    kept, trials = search.fewest(10, lambda kept: 0.5, 0.99)
    assert kept == 10 and trials[-1] == {"kept": 10, "agreement": 0.5}


@pytest.mark.parametrize("target_name", ["tflite", "tfjs"])
@pytest.mark.parametrize("threshold", [0.0, EXACT])
def test_smallest_keeps_the_smallest_artifact_that_passes_the_gate(digits_model, tmp_path, target_name, threshold):
    from factory import pipeline
    from factory.specs import BackboneSpec, DataSpec, ExportSpec

    model, digits, keras_probs, context = digits_model
    trained = pipeline.TrainedModel(model, NORMALIZATION, keras_probs, digits.test.labels, spec=None)
    prepared = pipeline.Prepared(DataSpec("digits"), BackboneSpec(), None, digits)
    spec = ExportSpec(targets=(target_name,), quantize=(SMALLEST,), min_agreement=threshold, latency_runs=0)
    context = dataclasses.replace(context, threshold=spec.threshold)
    target = REGISTRY[target_name]
    report = pipeline.smallest(trained, prepared, target, tmp_path, context, spec)
    tried = report.artifact.search["smallest_of"]
    assert [t["quantize"] for t in tried] and {t["quantize"] for t in tried} == {m.name for m in target.candidates()}
    assert [t["bytes"] for t in tried] == sorted(t["bytes"] for t in tried)
    chosen = next(t for t in tried if t.get("passes_gate"))
    assert report.artifact.quantize == chosen["quantize"] and report.agreement >= threshold
    assert all(not t["passes_gate"] for t in tried[:tried.index(chosen)])  # every smaller one failed
    if threshold == 0.0:
        assert chosen is tried[0]
    entry = report.manifest_entry(tmp_path)
    on_disk = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk == sorted(report.artifact.files)  # the losers and the scratch folder are gone
    assert entry["bytes"] == chosen["bytes"] == sum(p.stat().st_size for p in on_disk)
    assert entry["gzip_bytes"] == sum(len(gzip.compress(p.read_bytes(), compresslevel=9, mtime=0)) for p in on_disk)
    assert entry["gzip_bytes"] < entry["bytes"]


def test_smallest_is_not_a_conversion_of_its_own(digits_model, tmp_path):
    model, _, _, context = digits_model
    with pytest.raises(FactoryError, match="chooses among"):
        REGISTRY["tflite"].convert(model, SMALLEST, tmp_path, context)
    assert not any(tmp_path.iterdir())
