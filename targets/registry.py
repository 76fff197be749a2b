"""The deployment targets by the name used on the command line (`--target`).

A target class may declare settings as dataclass fields (TFLite: `int8_io`); `create` fills
them from the export settings it is given and ignores the rest.
"""
from __future__ import annotations

import dataclasses

from targets.base import Target
from targets.errors import FactoryError
from targets.tfjs import TFJSTarget
from targets.tflite import TFLiteTarget

TARGETS: dict[str, type[Target]] = {
    "tflite": TFLiteTarget,
    "tfjs": TFJSTarget,
}


def names() -> list[str]:
    return list(TARGETS)


def get(name: str, **settings) -> Target:
    if name not in TARGETS:
        raise FactoryError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}")
    cls = TARGETS[name]
    declared = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return cls(**{k: v for k, v in settings.items() if k in declared})
