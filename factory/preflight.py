"""What a build checks before TensorFlow is imported: options, paths, names, runtimes, the store.

Each check answers in well under a second, so a mistake is refused before the minutes of
work it would otherwise end.
"""
from __future__ import annotations

from pathlib import Path

from factory import data as data_lib, staging, store
from factory.specs import BuildSpec, PublishSpec
from targets.errors import FactoryError


def check_build(spec: BuildSpec) -> None:
    data_lib.check_source(spec.data.source)
    for target in spec.export.chosen_targets():
        problem = target.ready()
        if problem:
            raise FactoryError(f"--target {target.name}: {problem}")
    if spec.publish:
        check_publish(spec.publish)
    staging.check_destination(Path(spec.out))


def check_publish(spec: PublishSpec) -> None:
    """Refuse a bad name or a taken version."""
    store.check_name("--model-name", spec.model_name)
    if spec.version and spec.version in store.versions(Path(spec.store), spec.model_name):
        raise FactoryError(f"{spec.model_name} version {spec.version} is already published; "
                           "choose another --version")
