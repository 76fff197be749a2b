"""--prune: the backbone's convolutions reach the asked sparsity, what should stay whole does,
the model keeps its accuracy, and its artifacts agree with it and download smaller."""
from types import SimpleNamespace

import numpy as np
import pytest
from tensorflow_model_optimization.sparsity import keras as sparsity

from factory import backbones, classifier as classifier_lib, data as data_lib, pipeline, pruning
from factory.classifier import Classifier, is_batch_norm
from factory.progress import Silent
from factory.specs import BackboneSpec, CacheSpec, DataSpec, ExportSpec, TrainingSpec
from factory.strategies.session import TrainingSession
from factory.strategies.training import Phase
from targets.errors import FactoryError
from targets.tf_setup import keras, tf

SPARSITY = 0.5


def zeros(layer) -> int:
    return int(np.count_nonzero(layer.weights[0].numpy() == 0))


@pytest.mark.parametrize("total_steps", [1, 2, 3, 14, 66, 1000])
def test_the_schedule_reaches_the_target_within_two_thirds_of_the_run(total_steps):
    frequency, end_step = pruning.schedule_steps(total_steps)
    assert 1 <= end_step <= max(1, 2 * total_steps // 3) and end_step % frequency == 0
    assert end_step // frequency <= pruning.MASK_UPDATES
    schedule = sparsity.PolynomialDecay(0.0, SPARSITY, begin_step=0, end_step=end_step, frequency=frequency)
    masked_at, reached = schedule(tf.constant(end_step, tf.int64))  # tfmot counts steps from 1
    assert bool(masked_at) and float(reached) == pytest.approx(SPARSITY)


def test_a_backbone_without_convolution_layers_is_refused_in_one_line(tmp_path):
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    tf.saved_model.save(keras.Model(inputs, features), str(tmp_path / "saved"))
    hub_classifier = classifier_lib.build(backbones.resolve(BackboneSpec(f"hub:{tmp_path / 'saved'}", 32)), 3)
    with pytest.raises(FactoryError, match="--prune needs a backbone built as a Keras graph.*has 0"):
        pruning.prune(hub_classifier, None, TrainingSpec(prune=SPARSITY), None, None)


def small_cnn_classifier(num_classes: int) -> Classifier:
    """The factory's graph shape (normalize, backbone convolutions, head) on a small CNN."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 128, offset=-1, name="normalize")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    x = keras.layers.Conv2D(64, 1, activation="relu", name="pointwise")(x)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="factory_head_classifier")(features)
    model = keras.Model(inputs, outputs)
    return Classifier(model, keras.Model(inputs, features), None, SimpleNamespace(name="small-cnn"))


def test_pruning_zeroes_the_classifiers_own_kernels_and_it_still_classifies(tmp_path):
    digits = data_lib.load(DataSpec("digits"), 32)  # scikit-learn's 1,797 real handwritten digits
    keras.utils.set_random_seed(0)
    small = small_cnn_classifier(len(digits.class_names))
    small.model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    small.model.fit(digits.train.load_images(), digits.train.labels, epochs=10, batch_size=32, verbose=0)
    spec = TrainingSpec(prune=0.75, prune_epochs=3, fine_tune_learning_rate=1e-3)
    phase = pruning.prune(small, digits, spec, Silent(), TrainingSession(small.model, tmp_path / "checkpoint"))
    kernels = {layer.name: layer.weights[0].numpy() for layer in small.model.layers if layer.weights}
    assert [l.name for l in pruning.prunable_layers(small)] == ["conv", "pointwise"]
    for name in ("conv", "pointwise"):
        assert np.mean(kernels[name] == 0) == pytest.approx(0.75, abs=0.01), name
    for name in ("stem", "depthwise", "factory_head_classifier"):
        assert np.mean(kernels[name] == 0) < 0.05, name
    accuracy = np.mean(small.model.predict(digits.test.load_images(), verbose=0).argmax(1) == digits.test.labels)
    assert accuracy > 0.7 and phase.best_val_accuracy > 0.7  # 10 classes: chance is 0.1
    assert pruning.summary(small, 0.75)["sparsity"] == pytest.approx(0.75, abs=0.01)


def test_a_phase_after_a_reverted_one_runs_and_resumes_from_the_reverted_weights(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    phase = lambda name: Phase(name, 1, 1, None, None, 0.0)  # noqa: E731

    def steps(session, value_of_b):
        for name, value in (("a", 1.0), ("b", value_of_b)):
            session.run(name, lambda _: (model.set_weights([np.full((2, 1), value), np.zeros(1)]), phase(name))[1])
        session.revert_last()  # b did not help
        return session.run("c", lambda _: phase("c"))

    first = TrainingSession(model, tmp_path, "recipe")
    assert steps(first, 2.0).name == "c" and model.get_weights()[0][0, 0] == 1.0
    model.set_weights([np.full((2, 1), 9.0), np.zeros(1)])
    again = TrainingSession(model, tmp_path, "recipe", resume=True)  # every phase finished: nothing reruns
    assert steps(again, 5.0).name == "c" and model.get_weights()[0][0, 0] == 1.0


@pytest.fixture(scope="module")
def plain_and_pruned(fashion_small):
    """Feature extraction on real Fashion-MNIST, without and with pruning (the same head phase)."""
    spec = BackboneSpec(input_size=64)
    prepared = pipeline.Prepared(DataSpec("fashion-mnist", limit=600), spec, backbones.resolve(spec), fashion_small)
    training = TrainingSpec(epochs=8)
    plain = pipeline.train(prepared, training, cache=CacheSpec(enabled=False))
    before = {layer.name: [w.numpy().copy() for w in layer.weights] for layer in plain.model.layers}
    pruned = pipeline.train(prepared, TrainingSpec(epochs=8, prune=SPARSITY), cache=CacheSpec(enabled=False))
    return prepared, plain, before, pruned


@pytest.mark.slow
def test_pruning_zeroes_the_asked_share_of_the_convolutions_and_keeps_the_rest_whole(plain_and_pruned):
    _, plain, before, pruned = plain_and_pruned
    layers = {layer.name: layer for layer in pruned.classifier.backbone_layers()}
    convolutions = [l for l in layers.values() if type(l) is keras.layers.Conv2D]
    pruned_layers, stem = convolutions[1:], convolutions[0]
    for layer in pruned_layers:  # each layer is pruned to the target by its own magnitudes
        assert zeros(layer) / layer.weights[0].shape.num_elements() == pytest.approx(SPARSITY, abs=0.01), layer.name
    now = np.concatenate([l.weights[0].numpy().ravel() for l in pruned_layers])
    then = np.concatenate([before[l.name][0].ravel() for l in pruned_layers])
    assert np.abs(then[now == 0]).mean() < 0.5 * np.abs(then[now != 0]).mean()  # the small ones went
    assert not np.allclose(now[now != 0], then[now != 0])  # and the others trained on
    whole = [stem] + [l for l in layers.values() if isinstance(l, keras.layers.DepthwiseConv2D)]
    assert all(zeros(l) == np.count_nonzero(before[l.name][0] == 0) for l in whole)  # trained, not pruned
    batch_norms = [l for l in layers.values() if is_batch_norm(l)]
    assert batch_norms and all(all(np.array_equal(w.numpy(), b) for w, b in zip(l.weights, before[l.name]))
                               for l in batch_norms)  # frozen, in inference mode
    recorded = pruned.pruning
    assert recorded["sparsity"] == pytest.approx(SPARSITY, abs=0.01) and recorded["pruned_layers"] == len(pruned_layers)
    assert [p.name for p in pruned.phases] == ["head", "prune to 50% sparsity"]


@pytest.mark.slow
def test_a_pruned_model_is_evaluated_whole_and_keeps_its_accuracy(plain_and_pruned):
    prepared, plain, _, pruned = plain_and_pruned
    test = prepared.data.test
    assert np.allclose(pruned.test_probs, pruned.model.predict(test.load_images(), verbose=0), atol=1e-5)
    assert pruned.test_accuracy > 0.6  # 10 classes: chance is 0.1
    assert pruned.test_accuracy >= plain.test_accuracy - 0.15  # trained on after pruning, not just cut
    val = prepared.data.val  # the summary's "validation accuracy before, after" describe the two models
    after = np.mean(pruned.model.predict(val.load_images(), verbose=0).argmax(1) == val.labels)
    assert pruned.pruning["val_accuracy_after"] == pytest.approx(after, abs=1e-9)
    before = np.mean(plain.model.predict(val.load_images(), verbose=0).argmax(1) == val.labels)
    assert pruned.pruning["val_accuracy_before"] == pytest.approx(before, abs=1.5 / len(val))  # the same head recipe


@pytest.mark.slow
def test_pruned_artifacts_agree_with_keras_and_download_smaller(plain_and_pruned, tmp_path):
    prepared, plain, _, pruned = plain_and_pruned
    spec = ExportSpec(targets=("tflite", "tfjs"), quantize=("float16",), latency_runs=0)
    entries = {}
    for name, trained in (("plain", plain), ("pruned", pruned)):
        reports = pipeline.export(trained, prepared, spec, tmp_path / name)  # gated: each agrees >= 0.99
        entries[name] = {r.name: r.manifest_entry(tmp_path / name) for r in reports}
    for artifact, entry in entries["pruned"].items():
        plain_entry = entries["plain"][artifact]
        assert entry["agreement"] >= 0.99 and entry["bytes"] == pytest.approx(plain_entry["bytes"], rel=0.01)
        assert entry["gzip_bytes"] < 0.8 * plain_entry["gzip_bytes"], artifact
