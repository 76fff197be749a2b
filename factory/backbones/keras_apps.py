"""`keras.applications` backbones with weights from a local file (`--weights FILE`).

Nothing is downloaded: keras would fetch ImageNet weights from the internet, which these
machines (and many build farms) cannot reach, so the user passes the `*_notop.h5` file.
"""
from __future__ import annotations

from pathlib import Path

from factory.backbones import Backbone
from targets.errors import FactoryError

# name: (constructor, native input size, scale, offset) -- the preprocessing the weights expect.
APPS = {
    "mobilenet_v2": ("MobileNetV2", 224, 1 / 127.5, -1.0),
    "mobilenet_v3_small": ("MobileNetV3Small", 224, 1.0, 0.0),  # rescales inside the model
    "mobilenet_v3_large": ("MobileNetV3Large", 224, 1.0, 0.0),
    "efficientnet_b0": ("EfficientNetB0", 224, 1.0, 0.0),  # rescales inside the model
}


def backbone(name: str, input_size: int | None, weights: str | None) -> Backbone:
    constructor, native_size, scale, offset = APPS[name]
    if not weights:
        raise FactoryError(
            f"backbone {name} needs --weights FILE: a local keras weights file without the top "
            f"(e.g. {constructor.lower()}_..._notop.h5); nothing is downloaded"
        )
    path = Path(weights)
    if not path.is_file():
        raise FactoryError(f"--weights {weights}: no such file")

    def build(x):
        from targets.tf_setup import keras

        try:
            app = getattr(keras.applications, constructor)(
                include_top=False, weights=str(path), input_tensor=x, pooling="avg"
            )
        except (ValueError, OSError) as exc:
            raise FactoryError(f"--weights {weights} does not fit {name} without its top: {exc}") from exc
        return app.output

    return Backbone(
        name=name,
        input_size=input_size or native_size,
        scale=scale,
        offset=offset,
        build=build,
        source=str(path.resolve()),
    )
