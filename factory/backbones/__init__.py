"""Backbone registry: a name (or `hub:` handle) -> a Backbone that builds features on a tensor.

Every backbone carries its input size and the normalization its weights expect; the factory
bakes that normalization into the exported model, so apps feed plain RGB pixels in [0, 255].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from targets.errors import FactoryError

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    scale: float  # normalized = pixel * scale + offset
    offset: float
    build: Callable  # build(normalized_tensor) -> pooled feature tensor; layers applied in place
    source: str  # where the weights came from, for the manifest

    @property
    def normalization(self) -> dict:
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


def _keras_app(name: str):
    def make(input_size: int | None, weights: str | None) -> Backbone:
        from factory.backbones import keras_apps

        return keras_apps.backbone(name, input_size, weights)

    return make


REGISTRY: dict[str, Callable[[int | None, str | None], Backbone]] = {
    "efficientnet_lite0": _efficientnet_lite("lite0"),
    "efficientnet_lite1": _efficientnet_lite("lite1"),
    "efficientnet_lite2": _efficientnet_lite("lite2"),
}


def _register_keras_apps() -> None:
    from factory.backbones.keras_apps import APPS

    for app in APPS:
        REGISTRY[app] = _keras_app(app)


_register_keras_apps()


def names() -> list[str]:
    return sorted(REGISTRY) + ["hub:<TF Hub handle or SavedModel dir>"]


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
