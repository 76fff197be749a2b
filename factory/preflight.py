"""What a build checks before TensorFlow is imported: options, paths, names, runtimes, the store.

Each check answers in well under a second, so a mistake is refused before the minutes of
work it would otherwise end.
"""
from __future__ import annotations

from pathlib import Path

from factory import data as data_lib, signing, staging, store
from factory.specs import BuildSpec, PublishSpec
from targets.errors import FactoryError


def check_build(spec: BuildSpec) -> None:
    data_lib.check_source(spec.data, spec.backbone.name)
    if spec.backbone.weights:
        _require_file("--weights", spec.backbone.weights)
    for target in spec.export.chosen_targets():
        problem = target.ready()
        if problem:
            raise FactoryError(f"--target {target.name}: {problem}")
    if spec.publish:
        check_publish(spec.publish)
    staging.check_destination(Path(spec.out))


def check_publish(spec: PublishSpec) -> None:
    """Refuse a bad name, a taken version or a signing key that would fail after the build."""
    store.check_name("--model-name", spec.model_name)
    if spec.version and spec.version in store.versions(Path(spec.store), spec.model_name):
        raise FactoryError(f"{spec.model_name} version {spec.version} is already published; "
                           "choose another --version")
    if spec.sign_key:
        _require_file("--sign-key", spec.sign_key)
        signing.load_private_key(Path(spec.sign_key))


def _require_file(option: str, path) -> None:
    problem = data_lib.regular_file_problem(path)
    if problem:
        raise FactoryError(f"{option} {path}: {problem}")
