"""Any TF Hub handle or local TF2 SavedModel that maps images to a feature vector.

Follows the TF Hub image feature-vector convention: input [batch, size, size, 3] RGB in
[0, 1], output [batch, features]. The whole SavedModel is one `hub.KerasLayer`, so fine-tuning
can unfreeze it only as a whole; it is always called with `training=False` so its BatchNorm
statistics stay as trained (a BatchNorm drifting to the new domain collapses accuracy).
"""
from __future__ import annotations

from pathlib import Path

from factory.backbones import Backbone
from targets.errors import FactoryError, one_line

DEFAULT_INPUT_SIZE = 224


def check_handle(handle: str) -> None:
    if not handle:
        raise FactoryError("--backbone hub: needs a handle, e.g. hub:/path/to/saved_model")
    if "://" not in handle and not (Path(handle) / "saved_model.pb").is_file():
        raise FactoryError(f"--backbone hub:{handle}: no saved_model.pb in that folder; pass a TF2 SavedModel directory")


def backbone(handle: str, input_size: int | None) -> Backbone:
    check_handle(handle)

    def build(x):
        import tensorflow_hub as hub

        try:
            layer = hub.KerasLayer(handle, trainable=False, name="hub_backbone")
            features = layer(x, training=False)
        except Exception as exc:  # hub raises many types: OSError, ValueError, tf errors
            raise FactoryError(f"cannot load hub backbone {handle!r}: {one_line(exc)}") from exc
        if len(features.shape) != 2:
            raise FactoryError(
                f"hub backbone {handle!r} outputs shape {features.shape}; a feature vector [batch, features] is needed"
            )
        return features

    return Backbone(
        name=f"hub:{handle}",
        input_size=input_size or DEFAULT_INPUT_SIZE,
        scale=1 / 255,
        offset=0.0,
        build=build,
        source=handle,
    )
