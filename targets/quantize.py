"""Helpers shared by targets: calibration sets and quantization-aware training (tfmot).

tfmot traps handled here (measured, see DESIGN.md):
- the Rescaling layer that normalizes pixels is not in tfmot's registry: it gets a config that
  only quantizes its output, so the converted graph stays integer end to end;
- `quantize_apply` puts every wrapped kernel on the wrapper's trainable list whatever the
  source layer's `trainable` says. We choose explicitly: QAT adapts every weight to int8 at a
  low rate except BatchNorm, which stays frozen and in inference mode. (Adapting the head
  alone was measured worse: 0.845 vs 0.87 accuracy after int8 on Fashion-MNIST.)
- tfmot's activation ranges start at [-6, 6] and move by a 0.999 moving average: see
  `warm_up_ranges`;
- QAT needs a flat functional model (the factory's classifiers are built that way).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from targets.tf_setup import keras, tf


@dataclass
class Calibration:
    """Data a conversion may need: a representative set, and labelled data for QAT."""

    images: np.ndarray  # uint8 [n, h, w, 3] from the training split
    train_images: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None


def calibration_subset(images: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    if len(images) <= size:
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), size, replace=False))]


def representative_dataset(images: np.ndarray):
    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras


def _output_only_config():
    qk = _tfmot()

    class OutputOnlyQuantizeConfig(qk.QuantizeConfig):
        """Quantize a layer's output only (for layers without weights tfmot does not know)."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    return OutputOnlyQuantizeConfig


def quantization_aware_model(model: keras.Model) -> keras.Model:
    """A QAT copy of `model`: every weight trainable but BatchNorm's (see the module notes)."""
    qk = _tfmot()
    config_class = _output_only_config()

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if isinstance(layer, keras.layers.Rescaling):
            return qk.quantize_annotate_layer(layer, quantize_config=config_class())
        return qk.quantize_annotate_layer(layer)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with qk.quantize_scope({config_class.__name__: config_class}):
        quantized = qk.quantize_apply(annotated)
    for layer in quantized.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.BatchNormalization):
            inner.trainable = False
            layer._non_trainable_weights.extend(getattr(layer, "_trainable_weights", []))
            layer._trainable_weights = []
        elif inner.weights:
            inner.trainable = True
    return quantized


def warm_up_ranges(quantized: keras.Model, images: np.ndarray, *, decay: float = 0.7, passes: int = 3) -> None:
    """Move every activation range from tfmot's initial [-6, 6] to what the data produces.

    tfmot tracks ranges as moving averages with decay 0.999, so a short QAT run never gets
    there: activations above 6 stay clipped and accuracy collapses (measured: 0.17 on
    Fashion-MNIST). A few forward passes with a fast average fix the ranges first.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize
    quant_ops.MovingAvgQuantize = lambda *args, **kwargs: original(*args, **{**kwargs, "ema_decay": decay})
    try:
        step = tf.function(lambda x: quantized(x, training=True))
        for _ in range(passes):
            for start in range(0, len(images), 32):
                step(tf.constant(images[start:start + 32], tf.float32))
    finally:
        quant_ops.MovingAvgQuantize = original


def train_quantization_aware(
    quantized: keras.Model, calibration: Calibration, *, epochs: int, learning_rate: float, batch_size: int = 32
) -> None:
    warm_up_ranges(quantized, calibration.images)
    quantized.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    validation = None
    if calibration.val_images is not None:
        validation = (calibration.val_images, calibration.val_labels)
    quantized.fit(
        calibration.train_images, calibration.train_labels, validation_data=validation,
        epochs=epochs, batch_size=batch_size, verbose=0,
    )
