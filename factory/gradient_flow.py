"""Gradient-flow report: which layer groups actually learn after unfreezing.

Runs a few batches through the model in training mode under a GradientTape (eager, as in the
Keras transfer-learning guide) and reports, per block, the norm of the loss gradient with
respect to that block's trainable weights. Frozen blocks report no gradient at all; unfrozen
blocks whose norm is orders of magnitude below the head's barely move at a low learning rate.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from factory.classifier import Classifier, layer_groups
from targets.tf_setup import keras, tf

BATCH_SIZE = 32


def gradient_flow(classifier: Classifier, images: np.ndarray, labels: np.ndarray, *,
                  batches: int = 3, batch_size: int = BATCH_SIZE) -> list[dict]:
    """[{group, trainable_params, grad_norm}] bottom to top, head last; norms averaged over batches."""
    groups = layer_groups(classifier) + [("head", [classifier.model.get_layer("factory_head_classifier")])]
    weights = classifier.model.trainable_weights
    owner = {}
    for name, layers in groups:
        for layer in layers:
            for w in layer.trainable_weights:
                owner[id(w)] = name
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    sums = {name: 0.0 for name, _ in groups}
    count = 0
    for start in range(0, min(len(images), batches * batch_size), batch_size):
        x = tf.constant(images[start:start + batch_size], classifier.model.inputs[0].dtype)  # pixels or token ids
        y = tf.constant(labels[start:start + batch_size])
        with tf.GradientTape() as tape:
            loss = loss_fn(y, classifier.model(x, training=True))
        for w, g in zip(weights, tape.gradient(loss, weights)):
            if g is not None and id(w) in owner:
                sums[owner[id(w)]] += float(tf.reduce_sum(tf.square(g)))
        count += 1
    rows = []
    for name, layers in groups:
        params = int(sum(np.prod(w.shape) for layer in layers for w in layer.trainable_weights))
        rows.append({"group": name, "trainable_params": params,
                     "grad_norm": float(np.sqrt(sums[name] / max(count, 1))) if params else 0.0})
    return rows


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["group"] for r in rows]
    norms = np.array([r["grad_norm"] for r in rows])
    positive = norms[norms > 0]
    floor = positive.min() / 3 if len(positive) else 1e-6
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(rows)), 4.5))
    ax.bar(x, np.where(norms > 0, norms, np.nan), color="#4a7")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xticks(x, names, rotation=70)
    ax.set_ylabel("gradient norm (log)")
    ax.set_title(title)
    for i, r in enumerate(rows):
        if not r["trainable_params"]:
            ax.text(i, floor * 1.1, "frozen", rotation=90, ha="center", va="bottom", fontsize=8, color="#888")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
