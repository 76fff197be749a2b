"""The build pipeline: recipe -> data -> backbone -> strategy -> targets -> manifest."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory import backbones, classifier as classifier_lib, data as data_lib, manifest, output
from factory.errors import FactoryError
from factory.recipe import Recipe
from factory.strategies import STRATEGIES
from factory.tf_setup import keras
from targets import base as targets
from targets.parity import compare


@dataclass
class BuildResult:
    out: Path
    manifest: dict


def run(recipe: Recipe, reporter) -> BuildResult:
    if recipe.strategy not in STRATEGIES:
        raise FactoryError(f"unknown strategy {recipe.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    chosen_targets = [targets.get(name) for name in recipe.targets]
    backbone = backbones.resolve(recipe.backbone, recipe.input_size, recipe.weights)
    output.check_destination(Path(recipe.out))
    keras.utils.set_random_seed(recipe.seed)

    start = time.perf_counter()
    data = data_lib.load(
        recipe.data, backbone.input_size, limit=recipe.limit, seed=recipe.seed,
        val_fraction=recipe.val_fraction, test_fraction=recipe.test_fraction, strict=recipe.strict_data,
    )
    for line in data.skipped:
        reporter.note(f"[yellow]skipped unreadable image[/] {line}")
    model = classifier_lib.build(backbone, len(data.class_names), recipe.dropout)
    phases = STRATEGIES[recipe.strategy](model, data, recipe, reporter)
    train_seconds = time.perf_counter() - start
    trainable = classifier_lib.trainable_summary(model.model)
    keras_probs = model.model.predict(data.test.images, batch_size=64, verbose=0)
    keras_accuracy = float(np.mean(keras_probs.argmax(1) == data.test.labels))

    with output.staged(Path(recipe.out)) as staging:
        artifacts = []
        for target in chosen_targets:
            task = reporter.start(f"converting to {target.name}", total=2)
            artifact = target.convert(
                model.model, target.default_quantize, staging,
                labels=data.class_names, normalization=backbone.normalization,
            )
            reporter.advance(task)
            probs = target.predict(artifact, data.test.images)
            reporter.finish(task)
            artifacts.append({
                "target": artifact.target,
                "quantize": artifact.quantize,
                "file": artifact.path.name,
                "bytes": artifact.path.stat().st_size,
                "sha256": manifest.sha256(artifact.path),
                "convert_seconds": artifact.convert_seconds,
                **compare(keras_probs, probs, data.test.labels),
            })
        (staging / "labels.txt").write_text("\n".join(data.class_names) + "\n")
        body = {
            "backbone": {
                "name": backbone.name, "input_size": backbone.input_size,
                "normalization": backbone.normalization, "weights": backbone.source,
            },
            "strategy": {"name": recipe.strategy, **trainable, "phases": [p.as_dict() for p in phases]},
            "hyperparameters": recipe.as_dict(),
            "seed": recipe.seed,
            "data": {
                "source": recipe.data, "classes": data.class_names, "splits": data.sizes(),
                "skipped_images": len(data.skipped),
            },
            "metrics": {"keras_test_accuracy": keras_accuracy, "train_seconds": round(train_seconds, 2)},
            "artifacts": artifacts,
        }
        manifest.write(staging, body)
    return BuildResult(Path(recipe.out), manifest.read(Path(recipe.out)))
