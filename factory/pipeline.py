"""The pipeline in four stages; `factory build`, `bench`, `advise`, `inspect` and the Python API
all compose them:

    prepare(DataSpec, BackboneSpec)            -> Prepared      backbone resolved, data split
    train(Prepared, TrainingSpec)              -> TrainedModel  the strategy's phases, evaluated
    export(TrainedModel, Prepared, ExportSpec) -> [ArtifactReport]  each planned artifact:
        convert -> verify (its runtime vs Keras) -> gate (the caller's decision) -> timed
    publish(build folder, PublishSpec)         -> the release folder in the store

`build(BuildSpec)` runs them in order and writes labels.txt and manifest.json beside the
artifacts, all or nothing. The bench composes convert and verify without the gate.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from factory import (advisor, backbones, cache as cache_lib, classifier as classifier_lib, data as data_lib,
                     distributed, manifest, preflight, pruning, staging, store, strategies)
from factory.evaluation import evaluate, evaluate_on_features
from factory.progress import Reporter, Silent
from factory.specs import (QAT_UNDOES_PRUNING, BackboneSpec, BuildSpec, CacheSpec, DataSpec, ExportSpec,
                           PublishSpec, TrainingSpec, check_modality, weights_fingerprint)
from factory.strategies.session import TrainingSession
from factory.strategies.training import Phase
from targets import parity
from targets.base import QUANTIZATION_AWARE, SMALLEST, Artifact, ConversionContext, Mode, Target
from targets.errors import FactoryError
from targets.tf_setup import keras


# --- prepare -------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """The data stage's result: the resolved backbone and the split dataset."""

    data_spec: DataSpec
    backbone_spec: BackboneSpec
    backbone: backbones.Backbone
    data: data_lib.Dataset


def prepare(data: DataSpec, backbone: BackboneSpec = BackboneSpec(), reporter: Reporter = Silent()) -> Prepared:
    resolved = backbones.resolve(backbone)
    dataset = data_lib.load(data, resolved.input_size, reporter, tokenizer=resolved.tokenizer)
    for line in dataset.skipped:
        reporter.note(f"skipped {line}", "yellow")
    return Prepared(data, backbone, resolved, dataset)


# --- train ---------------------------------------------------------------------------------------

@dataclass
class TrainedModel:
    """A trained Keras model (RGB pixels in [0, 255], or token ids -> probabilities) and how it got there."""

    model: keras.Model
    preprocessing: dict  # the backbone's input contract (Backbone.preprocessing)
    test_probs: np.ndarray  # its probabilities on the test split
    test_labels: np.ndarray
    spec: TrainingSpec  # as trained (auto resolved to the advisor's choice)
    phases: list[Phase] = field(default_factory=list)
    train_seconds: float = 0.0  # the strategy's phases (and the advisor's probe, for auto)
    advice: dict | None = None  # the advisor's verdict when the strategy was auto
    classifier: classifier_lib.Classifier | None = None  # None for a model built outside the factory's graph
    variants: dict = field(default_factory=dict)  # models derived for export modes, by training step
    feature_cache: dict | None = None  # images found in the feature cache and extracted (cache.summary)
    pruning: dict | None = None  # the sparsity pruning left (pruning.summary), when the spec prunes

    @property
    def test_accuracy(self) -> float:
        return float(np.mean(self.test_probs.argmax(1) == self.test_labels))


def train(prepared: Prepared, spec: TrainingSpec = TrainingSpec(), *, cache: CacheSpec = CacheSpec(),
          reporter: Reporter = Silent(), checkpoint: Path | None = None, resume: bool = False) -> TrainedModel:
    """Build the classifier and train it with the spec's strategy (the advisor's, for auto),
    then prune it when the spec asks (factory.pruning).

    With a `checkpoint` folder every finished phase and epoch is saved there, and `resume`
    continues from it; the caller removes it once the result is safe.
    """
    _single_process_options(spec)
    spec = _for_backbone(spec, prepared.backbone)
    keras.utils.set_random_seed(spec.seed)
    data = prepared.data
    cluster = distributed.cluster()
    with cluster.scope():
        classifier = classifier_lib.build(prepared.backbone, len(data.class_names), spec.dropout)
    if spec.prune:
        pruning.prunable_layers(classifier)  # a backbone that cannot be pruned is refused before training
    extractor = classifier if cluster.strategy is None else classifier_lib.build(prepared.backbone, 1)
    start = time.perf_counter()
    advice = None
    fingerprint = weights_fingerprint(prepared.data_spec, prepared.backbone_spec, spec)
    session = TrainingSession(classifier.model, checkpoint, fingerprint, resume, writer=cluster.is_chief)
    if session.resumed:
        reporter.note(f"resuming after {len(session.done)} finished phase(s) from {checkpoint}")
    with cache_lib.open_store(extractor, cache.store_folder, cluster.shard) as features:
        if spec.strategy == "auto":
            advice, spec, phases = _race(classifier, data, spec, features, reporter, session)
        else:
            phases = strategies.get(spec.strategy)(classifier, data, spec, reporter, session, features)
        val_accuracy = None
        if spec.prune:
            before = pruning.validation_accuracy(classifier, data)  # the model as the strategy left it
            phases.append(pruning.prune(classifier, data, spec, reporter, session))
            val_accuracy = (before, phases[-1].best_val_accuracy)
        if cluster.strategy is not None:
            classifier = _plain_copy(classifier, prepared, spec)
        if spec.evaluates_on_features:  # the head on the cached features is the model
            test_probs = evaluate_on_features(classifier.head, features, data.test, reporter)
        else:
            test_probs = evaluate(classifier.model, data.test, reporter)
        feature_cache = cache_lib.summary(features)
    seconds = round(time.perf_counter() - start, 2)
    return TrainedModel(
        model=classifier.model, preprocessing=prepared.backbone.preprocessing,
        test_probs=test_probs, test_labels=data.test.labels, spec=spec,
        phases=phases, train_seconds=seconds,
        advice=advice, classifier=classifier, feature_cache=feature_cache,
        pruning=pruning.summary(classifier, spec.prune, val_accuracy),
    )


def _for_backbone(spec: TrainingSpec, backbone: backbones.Backbone) -> TrainingSpec:
    """The spec as this backbone trains it: a text encoder refuses image-only options and does not
    augment (flips and crops mean nothing to token ids)."""
    check_modality(backbone.name, spec)
    return dataclasses.replace(spec, augment=False) if backbone.tokenizer else spec


def _plain_copy(trained: classifier_lib.Classifier, prepared: Prepared, spec: TrainingSpec):
    """The classifier rebuilt outside the multi-worker strategy, with the trained weights and
    trainable flags: what the targets convert."""
    plain = classifier_lib.build(prepared.backbone, len(prepared.data.class_names), spec.dropout)
    for copy, layer in zip(plain.model.layers, trained.model.layers):
        copy.trainable = layer.trainable
    plain.model.set_weights(trained.model.get_weights())
    return plain


def advise(prepared: Prepared, spec: TrainingSpec = TrainingSpec(), cache: CacheSpec = CacheSpec(),
           reporter: Reporter = Silent()):
    """The advisor's verdict for this data: a measured race of the candidate strategies."""
    _single_process("the advisor", ADVISE_FIRST)
    spec = _for_backbone(spec, prepared.backbone)
    keras.utils.set_random_seed(spec.seed)
    classifier = classifier_lib.build(prepared.backbone, len(prepared.data.class_names), spec.dropout)
    with cache_lib.open_store(classifier, cache.store_folder) as features:
        race = advisor.race(classifier, prepared.data, spec, features, reporter, TrainingSession(classifier.model),
                            spec.advisor_budget_s)
    return race.advice()


def _race(classifier, data, spec: TrainingSpec, features, reporter: Reporter, session: TrainingSession):
    """--strategy auto: race the candidates, then train the pick fully from where its trial stopped."""
    race = advisor.race(classifier, data, spec, features, reporter, session, spec.advisor_budget_s)
    advice = race.advice()
    for line in advisor.table_lines(advice.evidence) + [f"advisor: {advice.flags()} -- " + "; ".join(advice.reasons)]:
        reporter.note(line)
    chosen, phases = advisor.train_winner(race, classifier, data, reporter)
    return advice.as_dict(), chosen, phases


ADVISE_FIRST = "run `factory advise` on one machine and pass its recommendation to the cluster build"


def _single_process(what: str, remedy: str) -> None:
    if distributed.configured()[0] > 1:
        raise FactoryError(f"{what} runs in one process, not across the workers of TF_CONFIG: {remedy}")


def _single_process_options(spec: TrainingSpec) -> None:
    """The training options a multi-worker build refuses."""
    if spec.strategy == "auto":
        _single_process("--strategy auto", ADVISE_FIRST)
    if spec.prune:
        _single_process("--prune", "build on one machine")


def restore(prepared: Prepared, spec: TrainingSpec, weights_path: Path) -> TrainedModel:
    """A TrainedModel from weights saved by a training elsewhere (another process)."""
    classifier = classifier_lib.build(prepared.backbone, len(prepared.data.class_names), spec.dropout)
    classifier.model.load_weights(str(weights_path))
    return TrainedModel(model=classifier.model, preprocessing=prepared.backbone.preprocessing,
                        test_probs=evaluate(classifier.model, prepared.data.test),
                        test_labels=prepared.data.test.labels, spec=spec, classifier=classifier,
                        pruning=pruning.summary(classifier, spec.prune))


# --- export -------------------------------------------------------------------------------------

VERIFY_BATCH = 512  # test images handed to an artifact's runtime at a time


@dataclass
class ArtifactReport:
    """One converted artifact, compared with the Keras model on the test split (or a sample of it)."""

    artifact: Artifact
    mode: Mode
    agreement: float  # top-1 agreement with Keras
    max_abs_diff: float
    accuracy: float  # of the artifact itself, in its runtime
    min_agreement: float  # the threshold it is held to
    description: dict  # stored number types
    verified_images: int = 0  # test images it was compared with Keras on
    verify_seconds: float = 0.0  # running it on those in its runtime
    latency: dict | None = None

    @property
    def passes_gate(self) -> bool:
        return self.agreement >= self.min_agreement

    @property
    def name(self) -> str:
        return f"{self.artifact.target} {self.artifact.quantize}"

    def manifest_entry(self, out_dir: Path) -> dict:
        files = self.artifact.files
        return {
            "target": self.artifact.target,
            "quantize": self.artifact.quantize,
            "file": str(self.artifact.path.relative_to(out_dir)),
            "files": [str(f.relative_to(out_dir)) for f in files],
            "bytes": sum(f.stat().st_size for f in files),
            "gzip_bytes": sum(manifest.gzip_size(f) for f in files),  # what an app download costs
            "sha256": manifest.sha256(self.artifact.path),
            "convert_seconds": self.artifact.convert_seconds, "verify_seconds": self.verify_seconds,
            "verified_images": self.verified_images,
            "agreement": self.agreement, "max_abs_diff": self.max_abs_diff, "accuracy": self.accuracy,
            "min_agreement": self.min_agreement,
            "passes_gate": self.passes_gate,
            "latency": self.latency,
            **self.description,
            **({"search": self.artifact.search} if self.artifact.search else {}),
        }


def conversion_context(name: str, trained: TrainedModel, prepared: Prepared, spec: ExportSpec,
                       plan: list[tuple]) -> ConversionContext:
    """What the `plan`'s conversions need: labels, the input contract, and the training examples that
    calibrate and validation images that searching modes measure on, when a mode needs them."""
    seed, data = prepared.data_spec.seed, prepared.data
    calibration = validation = None
    if any(mode.calibration for _, mode in plan):
        calibration = data.train.sample(spec.calibration_size, seed)
    if any(mode.search for _, mode in plan):
        validation = data.val.sample(spec.verify_images, seed)
    tokenizer = prepared.backbone.tokenizer
    return ConversionContext(name=name, labels=data.class_names, preprocessing=trained.preprocessing,
                             calibration=calibration, validation=validation, threshold=spec.threshold,
                             vocab_file=tokenizer.folder / "vocab.txt" if tokenizer else None)


def model_for(mode: Mode, trained: TrainedModel, prepared: Prepared, spec: ExportSpec, context) -> keras.Model:
    """The model a mode converts: the trained one, or a copy a training step prepared (once)."""
    if mode.training is None:
        return trained.model
    if mode.training != QUANTIZATION_AWARE:
        raise FactoryError(f"--quantize {mode.name} needs a training step this factory does not know: {mode.training}")
    if trained.spec.prune:
        raise FactoryError(QAT_UNDOES_PRUNING)
    if mode.training not in trained.variants:
        from factory import quantization_aware

        trained.variants[mode.training] = quantization_aware.train(
            trained.model, prepared.data.train, prepared.data.val, context.calibration,
            epochs=spec.qat_epochs, learning_rate=spec.qat_learning_rate, batch_size=trained.spec.batch_size)
    return trained.variants[mode.training]


def convert(trained: TrainedModel, prepared: Prepared, target: Target, mode: Mode, out_dir: Path,
            context: ConversionContext, spec: ExportSpec) -> Artifact:
    """Write one artifact; a training step its mode needs counts in its conversion time."""
    start = time.perf_counter()
    model = model_for(mode, trained, prepared, spec, context)
    step_seconds = time.perf_counter() - start
    artifact = target.convert(model, mode.name, out_dir, context)
    artifact.convert_seconds = round(artifact.convert_seconds + step_seconds, 2)
    return artifact


def verify(trained: TrainedModel, prepared: Prepared, target: Target, mode: Mode, artifact: Artifact,
           spec: ExportSpec) -> ArtifactReport:
    """Run the artifact in its own runtime on the test split (a stratified sample of
    `spec.verify_images` when it is larger: the check's cost stays bounded as the data grows)
    and compare it with Keras on the same images."""
    test, keras_probs = prepared.data.test, trained.test_probs
    if len(test) > spec.verify_images:
        positions = data_lib.stratified_subset(test.labels, spec.verify_images, prepared.data_spec.seed)
        test, keras_probs = test.subset(positions), keras_probs[positions]
    start = time.perf_counter()
    probs = np.concatenate([target.predict(artifact, images) for images, _ in test.batches(VERIFY_BATCH)])
    report = parity.compare(keras_probs, probs, test.labels)
    return ArtifactReport(artifact, mode, **report, min_agreement=spec.threshold(mode), verified_images=len(test),
                          description=target.describe(artifact),
                          verify_seconds=round(time.perf_counter() - start, 2))


def convert_and_verify(trained: TrainedModel, prepared: Prepared, target: Target, mode: Mode, out_dir: Path,
                       context: ConversionContext, spec: ExportSpec, reporter: Reporter = Silent()) -> ArtifactReport:
    """One artifact of `mode` (for smallest: the one it chose) and its comparison with Keras."""
    if mode.name == SMALLEST:
        return smallest(trained, prepared, target, out_dir, context, spec, reporter)
    artifact = convert(trained, prepared, target, mode, out_dir, context, spec)
    return verify(trained, prepared, target, mode, artifact, spec)


def gate(report: ArtifactReport) -> None:
    """Refuse an artifact that disagrees with Keras more than its threshold allows."""
    parity.gate(report.name, {"agreement": report.agreement}, report.min_agreement)


def export(trained: TrainedModel, prepared: Prepared, spec: ExportSpec, out_dir: Path, *, name: str = "model",
           reporter: Reporter = Silent()) -> list[ArtifactReport]:
    """Every planned artifact: converted, verified, gated on agreement with Keras, then timed."""
    check_modality(prepared.backbone.name, export=spec)
    plan = spec.plan()
    context = conversion_context(name, trained, prepared, spec, plan)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for target, mode in plan:
        task = reporter.start(f"{target.name} {mode.name}: convert, verify, time", total=2)
        report = convert_and_verify(trained, prepared, target, mode, out_dir, context, spec, reporter)
        gate(report)
        reporter.advance(task)
        if spec.latency_runs:
            report.latency = target.latency(report.artifact, runs=spec.latency_runs)
        reporter.finish(task)
        reports.append(report)
    return reports


def smallest(trained: TrainedModel, prepared: Prepared, target: Target, out_dir: Path, context: ConversionContext,
             spec: ExportSpec, reporter: Reporter = Silent()) -> ArtifactReport:
    """--quantize smallest: convert each candidate mode of `target` (in a scratch folder), verify
    them from the smallest file up, and keep the first that passes the gate; the others are
    deleted and the kept artifact's record lists them all."""
    threshold = spec.threshold(target.mode(SMALLEST))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".smallest-") as scratch:
        built = []
        for mode in target.candidates(text=context.vocab_file is not None):
            reporter.note(f"{target.name} smallest: converting {mode.name}")
            built.append((mode, convert(trained, prepared, target, mode, Path(scratch), context, spec)))
        built.sort(key=lambda pair: _bytes(pair[1].files))
        tried, chosen = [], None
        for mode, artifact in built:
            row = {"quantize": mode.name, "bytes": _bytes(artifact.files)}
            if chosen is None:
                report = verify(trained, prepared, target, mode, artifact, spec)
                row.update(agreement=report.agreement, passes_gate=report.agreement >= threshold)
                if row["passes_gate"]:
                    chosen = report
            tried.append(row)
        if chosen is None:
            raise FactoryError(f"{target.name} --quantize smallest: no mode agrees with the Keras model on "
                               f"{threshold} of the test images (" + ", ".join(
                                   f"{t['quantize']} {t['agreement']:.3f}" for t in tried) + ")")
        chosen.artifact = _moved(chosen.artifact, Path(scratch), out_dir)
    chosen.min_agreement = threshold
    chosen.artifact.search = {"smallest_of": tried, "rule": f"the smallest file agreeing on >= {threshold}",
                              **(chosen.artifact.search or {})}
    return chosen


def _bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def _moved(artifact: Artifact, source: Path, destination: Path) -> Artifact:
    """`artifact` with its files moved from `source` to the same place under `destination`."""
    def move(path: Path) -> Path:
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        return target

    files = [move(f) for f in artifact.files]
    return dataclasses.replace(artifact, path=destination / artifact.path.relative_to(source), files=files)


# --- publish -------------------------------------------------------------------------------------

def publish(build_dir: Path, spec: PublishSpec) -> Path:
    return store.publish(Path(build_dir), Path(spec.store), spec.model_name, spec.version, sign_key=spec.sign_key)


# --- build: the stages in order ------------------------------------------------------------------

@dataclass
class BuildResult:
    out: Path
    manifest: dict
    prepared: Prepared
    trained: TrainedModel
    artifacts: list[ArtifactReport]
    release: Path | None = None  # where it was published, if it was


def build(spec: BuildSpec, reporter: Reporter = Silent()) -> BuildResult | None:
    """Every stage in order. In a multi-worker build (TF_CONFIG) every worker trains; only the
    chief exports, writes `out` and publishes, and the other workers return None."""
    _single_process_options(spec.training)
    cluster = distributed.cluster()  # before any other TensorFlow op
    out = Path(spec.out)
    preflight.check_build(spec)
    start = time.perf_counter()
    prepared = prepare(spec.data, spec.backbone, reporter)
    trained = train(prepared, spec.training, cache=spec.cache, reporter=reporter, checkpoint=spec.checkpoint_dir,
                    resume=spec.resume)
    train_seconds = round(time.perf_counter() - start, 2)  # data, backbone and training: what a user waits for
    if not cluster.is_chief:
        if not cluster.barrier():
            raise FactoryError("the chief (worker 0) failed to export, see its output; nothing was written")
        return None
    done = False
    try:
        with staging.staged(out) as folder:
            reports = export(trained, prepared, spec.export, folder, name=out.resolve().name or "model",
                             reporter=reporter)
            (folder / "labels.txt").write_text("\n".join(prepared.data.class_names) + "\n")
            body = manifest_body(dataclasses.replace(spec, training=trained.spec), prepared, trained, train_seconds,
                                 [r.manifest_entry(folder) for r in reports])
            manifest.write(folder, body)
        shutil.rmtree(spec.checkpoint_dir, ignore_errors=True)  # the build is safe: its checkpoint is not needed
        release = publish(out, spec.publish) if spec.publish else None
        done = True
        return BuildResult(out, manifest.read(out), prepared, trained, reports, release)
    finally:
        cluster.barrier(done)  # the other workers leave once the chief is done, and learn how it went


def manifest_body(spec: BuildSpec, prepared: Prepared, trained: TrainedModel, train_seconds: float,
                  artifacts: list[dict]) -> dict:
    backbone, data = prepared.backbone, prepared.data
    return {
        "backbone": {"name": backbone.name, "modality": backbone.modality, "input_size": backbone.input_size,
                     "tokenizer" if backbone.tokenizer else "normalization": backbone.preprocessing,
                     "weights": backbone.source},
        "strategy": {"name": trained.spec.strategy, **classifier_lib.trainable_summary(trained.model),
                     "phases": [p.as_dict() for p in trained.phases], "advice": trained.advice,
                     "pruning": trained.pruning},
        "hyperparameters": spec.hyperparameters(),
        "seed": spec.training.seed,
        "data": {"source": spec.data.source, "classes": data.class_names, "splits": data.sizes(),
                 "skipped_examples": len(data.skipped)},
        "metrics": {"keras_test_accuracy": trained.test_accuracy, "train_seconds": train_seconds,
                    "feature_cache": trained.feature_cache},
        "artifacts": artifacts,
    }


__all__ = ["prepare", "train", "advise", "restore", "convert", "verify", "gate", "export", "publish", "build",
           "Prepared", "TrainedModel", "ArtifactReport", "BuildResult"]
