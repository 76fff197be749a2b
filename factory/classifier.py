"""The model the factory trains and exports: pixels -> normalize -> backbone -> head (a text
encoder: token ids -> encoder -> head).

One flat functional graph (backbone layers applied directly on the normalized input), so
layers can be frozen one by one and tfmot can wrap them. The head's layers are shared with a
small head-only model that trains on cached features: same weights, no copy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from factory import tokenizer
from factory.backbones import Backbone
from factory.specs import TrainingSpec
from targets.tf_setup import keras, tf

INPUT_NAME = "image"
TEXT_INPUT_NAME = tokenizer.INPUT_NAME
HEAD_PREFIX = "factory_head_"


@dataclass
class Classifier:
    model: keras.Model  # pixels in [0, 255] (or token ids) -> class probabilities
    feature_model: keras.Model  # pixels (or token ids) -> pooled backbone features
    head: keras.Model  # features -> class probabilities (shares the head layers of `model`)
    backbone: Backbone

    def backbone_layers(self) -> list[keras.layers.Layer]:
        """Backbone layers in graph order (no input, normalization or head)."""
        return [
            layer for layer in self.model.layers
            if not isinstance(layer, keras.layers.InputLayer)
            and layer.name != "normalize" and not layer.name.startswith(HEAD_PREFIX)
        ]

    def feature_fn(self):
        """uint8 images (or token ids) -> pooled features (numpy), one compiled call per batch."""
        return inference_fn(self.feature_model)

    def features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        run = self.feature_fn()
        return np.concatenate([run(images[start:start + batch_size]) for start in range(0, len(images), batch_size)])


def inference_fn(model: keras.Model):
    """images (or token ids) -> model outputs (numpy), in inference mode; a plain call, so it also
    runs outside a multi-worker strategy's collective steps (each worker on its own batches)."""
    dtype = model.inputs[0].dtype
    call = tf.function(lambda x: model(tf.cast(x, dtype), training=False), reduce_retracing=True)
    return lambda images: call(images).numpy()


def build(backbone: Backbone, num_classes: int, dropout: float = TrainingSpec.dropout) -> Classifier:
    size = backbone.input_size
    if backbone.tokenizer:
        inputs = keras.Input((size,), dtype="int32", name=TEXT_INPUT_NAME)
        features = backbone.build(inputs)
    else:
        inputs = keras.Input((size, size, 3), name=INPUT_NAME)
        features = backbone.build(keras.layers.Rescaling(backbone.scale, backbone.offset, name="normalize")(inputs))
    drop = keras.layers.Dropout(dropout, name=HEAD_PREFIX + "dropout")
    dense = keras.layers.Dense(num_classes, activation="softmax", name=HEAD_PREFIX + "classifier")
    model = keras.Model(inputs, dense(drop(features)), name="classifier")
    feature_inputs = keras.Input((features.shape[-1],), name="features")
    head = keras.Model(feature_inputs, dense(drop(feature_inputs)), name="head")
    classifier = Classifier(model, keras.Model(inputs, features, name="features"), head, backbone)
    freeze_backbone(classifier)
    return classifier


def freeze_backbone(classifier: Classifier) -> None:
    for layer in classifier.backbone_layers():
        layer.trainable = False


def is_batch_norm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def unfreeze_top(classifier: Classifier, count: int | None) -> list[str]:
    """Make the top `count` weighted backbone layers trainable (all when None).

    BatchNorm layers stay frozen: in tf_keras a frozen BatchNorm also runs in inference mode,
    so its statistics are not dragged toward the small new dataset. Returns the names made
    trainable, bottom to top.
    """
    freeze_backbone(classifier)
    candidates = [l for l in classifier.backbone_layers() if l.weights and not is_batch_norm(l)]
    chosen = candidates if count is None else candidates[len(candidates) - count:] if count else []
    for layer in chosen:
        layer.trainable = True
    return [layer.name for layer in chosen]


_BLOCK = re.compile(r"^(block_?\d+)")


def layer_groups(classifier: Classifier) -> list[tuple[str, list]]:
    """Backbone layers grouped into blocks, bottom to top: stem, block0 ... blockN, top.

    A block is a run of layers named `block<N>_...` or `block_<N>_...` (EfficientNet-Lite,
    keras.applications; MiniLM's transformer layers); layers before the first block form "stem",
    after the last "top". A group without weights (MiniLM's pooling after its last layer) is
    not counted. A backbone without numbered blocks (a hub layer) is one group.
    """
    groups: list[tuple[str, list]] = []
    seen_block = False
    for layer in classifier.backbone_layers():
        match = _BLOCK.match(layer.name)
        if match:
            seen_block = True
            name = match.group(1)
        else:
            name = "top" if seen_block else "stem"
        if not groups or groups[-1][0] != name:
            groups.append((name, []))
        groups[-1][1].append(layer)
    if not seen_block:
        return [("backbone", classifier.backbone_layers())]
    return [(name, layers) for name, layers in groups if any(layer.weights for layer in layers)]


def unfreeze_top_blocks(classifier: Classifier, count: int) -> list[str]:
    """Unfreeze (BatchNorm excepted) the top `count` groups of `layer_groups`; returns layer names."""
    freeze_backbone(classifier)
    chosen = [layer for _, layers in layer_groups(classifier)[-count:] for layer in layers] if count else []
    names = []
    for layer in chosen:
        if layer.weights and not is_batch_norm(layer):
            layer.trainable = True
            names.append(layer.name)
    return names


def trainable_summary(model: keras.Model) -> dict:
    trainable = [l.name for l in model.layers if l.trainable and l.trainable_weights]
    return {
        "trainable_layers": len(trainable),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "total_params": int(model.count_params()),
    }
