"""The build pipeline: recipe -> data -> backbone -> strategy -> targets -> manifest."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory import backbones, classifier as classifier_lib, data as data_lib, manifest, output, store
from targets.errors import FactoryError
from factory.recipe import Recipe
from factory.strategies import STRATEGIES
from factory.strategies.session import TrainingSession, recipe_fingerprint
from targets.tf_setup import keras
from targets import base as targets, parity
from targets.quantize import Calibration, calibration_subset


@dataclass
class BuildResult:
    out: Path
    manifest: dict
    classifier: classifier_lib.Classifier
    data: data_lib.Dataset
    release: Path | None = None  # where it was published, if it was


def plan_artifacts(target_names: list[str], quantize: list[str]) -> list[tuple]:
    """(target, quantize mode) pairs: each requested mode on every target that offers it."""
    chosen = [targets.get(name) for name in dict.fromkeys(target_names)]
    if not quantize:
        return [(t, t.default_quantize) for t in chosen]
    for mode in quantize:
        if not any(mode in t.quantize_modes for t in chosen):
            offered = "; ".join(f"{t.name}: {', '.join(t.quantize_modes)}" for t in chosen)
            raise FactoryError(f"--quantize {mode} is not offered by the chosen targets ({offered})")
    return [(t, mode) for t in chosen for mode in dict.fromkeys(quantize) if mode in t.quantize_modes]


def run(recipe: Recipe, reporter) -> BuildResult:
    if recipe.strategy not in (*STRATEGIES, "auto"):
        raise FactoryError(f"unknown strategy {recipe.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    plan = plan_artifacts(recipe.targets, recipe.quantize)
    model_name = recipe.model_name or Path(recipe.out).resolve().name
    if recipe.publish:
        store.check_name("--model-name", model_name)
        if recipe.version and recipe.version in store.versions(Path(recipe.publish), model_name):
            raise FactoryError(f"{model_name} version {recipe.version} is already published; choose another --version")
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
    advice = None
    if recipe.strategy == "auto":
        advice = advise(model, data, recipe, reporter)
        # replace() re-runs __post_init__: an augment left unset now follows the chosen strategy
        recipe = dataclasses.replace(recipe, strategy=advice.strategy, unfreeze_blocks=advice.unfreeze_blocks)
    session = TrainingSession(model.model, recipe.checkpoint_dir, recipe_fingerprint(recipe), recipe.resume)
    if session.resumed:
        reporter.note(f"resuming after {len(session.done)} finished phase(s) from {recipe.checkpoint_dir}")
    phases = STRATEGIES[recipe.strategy](model, data, recipe, reporter, session)
    train_seconds = time.perf_counter() - start
    trainable = classifier_lib.trainable_summary(model.model)
    keras_probs = model.model.predict(data.test.images, batch_size=64, verbose=0)
    keras_accuracy = float(np.mean(keras_probs.argmax(1) == data.test.labels))

    with output.staged(Path(recipe.out)) as staging:
        artifacts = export(model, data, recipe, plan, staging, keras_probs, reporter)
        (staging / "labels.txt").write_text("\n".join(data.class_names) + "\n")
        body = {
            "backbone": {
                "name": backbone.name, "input_size": backbone.input_size,
                "normalization": backbone.normalization, "weights": backbone.source,
            },
            "strategy": {"name": recipe.strategy, **trainable, "phases": [p.as_dict() for p in phases],
                         "advice": advice.as_dict() if advice else None},
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
    session.finish()
    release = store.publish(Path(recipe.out), Path(recipe.publish), model_name, recipe.version) if recipe.publish else None
    return BuildResult(Path(recipe.out), manifest.read(Path(recipe.out)), model, data, release)


def advise(model, data, recipe: Recipe, reporter):
    from factory import advisor

    task = reporter.start("advisor probe (linear head, learning curve)", total=1)
    advice = advisor.recommend(advisor.probe(model, data, seed=recipe.seed, cache_dir=recipe.cache_dir,
                                             use_cache=recipe.cache))
    reporter.finish(task)
    blocks = f", top {advice.unfreeze_blocks} blocks" if advice.unfreeze_blocks else ""
    reporter.note(f"advisor: {advice.strategy}{blocks} -- " + "; ".join(advice.reasons))
    return advice


def conversion_context(model, data, recipe: Recipe) -> targets.ConversionContext:
    return targets.ConversionContext(
        name=Path(recipe.out).name or "model",
        labels=data.class_names,
        normalization=model.backbone.normalization,
        calibration=Calibration(
            images=calibration_subset(data.train.images, recipe.calibration_size, recipe.seed),
            train_images=data.train.images, train_labels=data.train.labels,
            val_images=data.val.images, val_labels=data.val.labels,
        ),
        int8_io=recipe.int8_io,
        qat_epochs=recipe.qat_epochs,
    )


def export(model, data, recipe: Recipe, plan, out_dir: Path, keras_probs: np.ndarray, reporter) -> list[dict]:
    """Convert, verify (parity gate) and time every planned artifact; returns manifest entries."""
    context = conversion_context(model, data, recipe)
    return [
        export_artifact(target, mode, model.model, context, out_dir, data.test, keras_probs, reporter,
                        min_agreement=recipe.min_agreement, latency_runs=recipe.latency_runs)
        for target, mode in plan
    ]


def export_artifact(target, mode: str, model, context, out_dir: Path, test, keras_probs: np.ndarray, reporter, *,
                    min_agreement: float | None, latency_runs: int, gate: bool = True) -> dict:
    """One artifact: convert, compare with Keras on the test split, time it; its manifest entry.

    With gate=False (the benchmark) an artifact below the agreement threshold is measured and
    marked, not refused.
    """
    task = reporter.start(f"{target.name} {mode}: convert, verify, time", total=3)
    artifact = target.convert(model, mode, out_dir, context)
    reporter.advance(task)
    report = parity.compare(keras_probs, target.predict(artifact, test.images), test.labels)
    if gate:
        threshold = parity.gate(f"{target.name} {mode}", mode, report, min_agreement)
    else:
        threshold = parity.min_agreement_for(mode, min_agreement)
    reporter.advance(task)
    timing = target.latency(artifact, runs=latency_runs) if latency_runs else None
    reporter.finish(task)
    return {
        "target": artifact.target,
        "quantize": artifact.quantize,
        "file": str(artifact.path.relative_to(out_dir)),
        "files": [str(f.relative_to(out_dir)) for f in artifact.files],
        "bytes": sum(f.stat().st_size for f in artifact.files),
        "sha256": manifest.sha256(artifact.path),
        "convert_seconds": artifact.convert_seconds,
        **report,
        "min_agreement": threshold,
        "passes_gate": report["agreement"] >= threshold,
        "latency": timing,
        **target.describe(artifact),
    }
