"""Backbone registry: a name (or `hub:` handle) -> a Backbone that builds features on a tensor.

An image backbone carries its input size and the normalization its weights expect; the factory
bakes that normalization into the exported model, so apps feed plain RGB pixels in [0, 255].
A text encoder carries its tokenizer instead: apps feed its token ids (factory.tokenizer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from factory.tokenizer import WordPiece
from targets.errors import FactoryError

DEFAULT_BACKBONE = "efficientnet_lite0"
TEXT_BACKBONES = ("minilm_l6",)
TEXT_LENGTHS = (8, 512)  # tokens per text a text encoder accepts (its position table)
DEFAULT_TEXT_LENGTH = 128


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    scale: float  # normalized = pixel * scale + offset
    offset: float
    build: Callable  # build(normalized_tensor) -> pooled feature tensor; layers applied in place
    source: str  # where the weights came from, for the manifest
    tokenizer: WordPiece | None = None  # text encoders: text -> token ids (input_size tokens)

    @property
    def modality(self) -> str:
        return "text" if self.tokenizer else "image"

    @property
    def preprocessing(self) -> dict:
        """What an app does before the model: feed pixels (normalized in the graph) or token ids."""
        if self.tokenizer:
            return self.tokenizer.contract()
        return {"scale": self.scale, "offset": self.offset, "input_range": [0, 255]}


def _efficientnet_lite(variant: str):
    def make(input_size: int | None, weights: str | None) -> Backbone:
        from factory.backbones import efficientnet_lite

        if weights:
            raise FactoryError(f"--weights is not used with efficientnet_{variant}: its weights are bundled")
        path = efficientnet_lite.weights_path(variant)
        return Backbone(
            name=f"efficientnet_{variant}",
            input_size=input_size or efficientnet_lite.VARIANTS[variant][2],
            scale=1 / 128,
            offset=-127 / 128,
            build=lambda x: efficientnet_lite.build(x, variant),
            source=f"{path.parent.parent.name}/{path.name} (ImageNet-1k)",
        )

    return make


def _minilm(input_size: int | None, weights: str | None) -> Backbone:
    from factory.backbones import minilm

    if weights:
        raise FactoryError("--weights is not used with minilm_l6: its weights are bundled")
    folder = minilm.model_dir()
    length = input_size or DEFAULT_TEXT_LENGTH
    return Backbone(name="minilm_l6", input_size=length, scale=1.0, offset=0.0, build=minilm.build,
                    source=f"{minilm.PACKAGE}/model/model.safetensors (all-MiniLM-L6-v2)",
                    tokenizer=WordPiece(folder, length))


def _keras_app(name: str):
    def make(input_size: int | None, weights: str | None) -> Backbone:
        from factory.backbones import keras_apps

        return keras_apps.backbone(name, input_size, weights)

    return make


REGISTRY: dict[str, Callable[[int | None, str | None], Backbone]] = {
    "efficientnet_lite0": _efficientnet_lite("lite0"),
    "efficientnet_lite1": _efficientnet_lite("lite1"),
    "efficientnet_lite2": _efficientnet_lite("lite2"),
    "minilm_l6": _minilm,
}


def _register_keras_apps() -> None:
    from factory.backbones.keras_apps import APPS

    for app in APPS:
        REGISTRY[app] = _keras_app(app)


_register_keras_apps()


def names() -> list[str]:
    return sorted(REGISTRY) + ["hub:<TF Hub handle or SavedModel dir>"]


def modality(name: str) -> str:
    """What a backbone reads, known from its name: "text" or "image"."""
    return "text" if name in TEXT_BACKBONES else "image"


def check_name(name: str) -> None:
    """Refuse an unknown registry name, or a hub handle that names no SavedModel folder."""
    if name.startswith("hub:"):
        from factory.backbones import hub

        hub.check_handle(name[len("hub:"):])
    elif name not in REGISTRY:
        raise FactoryError(f"unknown backbone {name!r}: choose one of {', '.join(names())}")


def resolve(spec) -> Backbone:
    """Turn a BackboneSpec into a Backbone (weights are loaded when it is built)."""
    check_name(spec.name)
    if spec.name.startswith("hub:"):
        from factory.backbones import hub

        return hub.backbone(spec.name[len("hub:"):], spec.input_size)
    return REGISTRY[spec.name](spec.input_size, spec.weights)
