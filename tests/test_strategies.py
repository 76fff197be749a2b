import numpy as np
import pytest

from factory import backbones, cache, classifier
from factory.classifier import is_batch_norm
from factory import strategies
from factory.progress import Silent
from factory.specs import BackboneSpec, TrainingSpec
from factory.strategies.session import TrainingSession


def snapshot(layers):
    return {layer.name: [w.numpy().copy() for w in layer.weights] for layer in layers}


def changed(before, layer):
    return any(not np.array_equal(a, w.numpy()) for a, w in zip(before[layer.name], layer.weights))


def accuracy(model, split):
    return float(np.mean(model.model.predict(split.load_images(), verbose=0).argmax(1) == split.labels))


def train(strategy, data, **overrides):
    settings = {"epochs": 8, "fine_tune_epochs": 2, **overrides}
    spec = TrainingSpec(strategy=strategy, **settings)
    model = classifier.build(backbones.resolve(BackboneSpec(input_size=64)), len(data.class_names))
    before = snapshot(model.model.layers)
    with cache.open_store(model, None) as store:  # a private feature store, deleted afterwards
        phases = strategies.get(strategy)(model, data, spec, Silent(), TrainingSession(model.model), store)
    return model, before, phases


def test_feature_extraction_trains_only_the_head(fashion_small):
    model, before, phases = train("feature-extraction", fashion_small)
    assert [p.name for p in phases] == ["head"]
    assert not any(changed(before, layer) for layer in model.backbone_layers())
    assert changed(before, model.model.get_layer("factory_head_classifier"))
    assert accuracy(model, fashion_small.test) > 0.6  # 10 classes: chance is 0.1


def test_fine_tune_changes_exactly_the_unfrozen_top_and_keeps_batchnorm(fashion_small):
    model, before, phases = train("fine-tune", fashion_small, unfreeze=5)
    assert [p.name for p in phases] == ["head", "fine-tune top 5"]
    weighted = [l for l in model.backbone_layers() if l.weights and not is_batch_norm(l)]
    assert [l.name for l in weighted[-5:]] == [l.name for l in model.backbone_layers() if l.trainable and l.weights]
    assert all(changed(before, layer) for layer in weighted[-5:])
    assert not any(changed(before, layer) for layer in weighted[:-5])
    batch_norms = [l for l in model.backbone_layers() if is_batch_norm(l)]
    assert batch_norms and not any(changed(before, l) for l in batch_norms)  # gamma, beta, moving stats
    assert accuracy(model, fashion_small.test) > 0.6
    # the learning rate fell along its cosine to (almost) 0 by the phase's last step
    assert float(model.model.optimizer.learning_rate) < 0.02 * TrainingSpec().backbone_learning_rate


def test_unfreeze_all_leaves_only_batchnorm_frozen(fashion_small):
    model = classifier.build(backbones.resolve(BackboneSpec(input_size=64)), 10)
    names = classifier.unfreeze_top(model, None)
    frozen = [l for l in model.backbone_layers() if l.weights and not l.trainable]
    assert frozen and all(is_batch_norm(l) for l in frozen)
    assert len(names) == len([l for l in model.backbone_layers() if l.weights]) - len(frozen)


def test_unfreeze_zero_is_refused(fashion_small):
    from targets.errors import FactoryError

    with pytest.raises(FactoryError, match="--unfreeze 0"):
        train("fine-tune", fashion_small, unfreeze=0)


def test_gradual_unfreezing_adds_one_block_per_stage(fashion_small):
    model, before, phases = train("fine-tune", fashion_small, gradual=True, unfreeze_blocks=2, fine_tune_epochs=1)
    names = [p.name for p in phases]
    assert names[:2] == ["head", "gradual: top 1 blocks"] and names[2:] in ([], ["gradual: top 2 blocks"])
    assert accuracy(model, fashion_small.test) > 0.6
    assert not any(changed(before, l) for l in model.backbone_layers() if is_batch_norm(l))
    # a stage is kept while it lowers the best validation loss; the first that does not is reverted
    kept, best = 0, phases[0].best_val_loss
    for phase in phases[1:]:
        if phase.best_val_loss >= best:
            break
        kept, best = kept + 1, phase.best_val_loss
    groups = classifier.layer_groups(model)
    weighted = [[l for l in layers if l.weights and not is_batch_norm(l)] for _, layers in groups]
    top, rest = (weighted[-kept:], weighted[:-kept]) if kept else ([], weighted)
    assert all(changed(before, l) for layers in top for l in layers)  # the kept stages trained their blocks
    assert not any(changed(before, l) for layers in rest for l in layers)  # never unfrozen, or reverted
    assert changed(before, model.model.get_layer("factory_head_classifier"))


def test_class_weights_only_for_imbalanced_labels():
    from factory.strategies.training import balanced_class_weights

    assert balanced_class_weights(np.array([0, 0, 1, 1, 2, 2]), 3) is None
    weights = balanced_class_weights(np.array([0] * 8 + [1] * 2), 2)
    assert weights == {0: 10 / 16, 1: 10 / 4}
