"""Fine-tuning: train the head first, then unfreeze the top of the backbone at a lower rate.

Phase 1 is feature extraction (a random head's large gradients would wreck the pretrained
features). Phase 2 unfreezes the top `--unfreeze-blocks K` blocks, or the top `--unfreeze N`
weighted layers (all: every one), keeps every BatchNorm frozen and in inference mode, trains
at `fine_tune_learning_rate` (default: a tenth of the head's) on augmented images streamed from
the data stage, its learning rate falling along a cosine to 0 over the phase, with early
stopping that restores the best weights. `--gradual` unfreezes one
more block per stage for as long as the validation loss improves, and keeps the best stage.
"""
from __future__ import annotations

import math

from factory.cache import FeatureStore
from factory.classifier import Classifier, layer_groups, unfreeze_top, unfreeze_top_blocks
from factory.data import Dataset
from factory.specs import TrainingSpec
from factory.strategies import feature_extraction
from factory.strategies.session import TrainingSession
from factory.strategies.training import Phase, augmenter, fit
from targets.errors import FactoryError


def fit_backbone(classifier, data, spec: TrainingSpec, reporter, session, name, epochs: int | None = None,
                 compiled: bool = False) -> Phase:
    """Phase 2: train the unfrozen layers for `epochs` (default: the spec's fine-tune epochs).
    `compiled`: go on with the model's optimizer and where its schedule stands (an advisor trial)."""
    batch = feature_extraction.global_batch(spec)
    augment = augmenter(spec.seed) if spec.augments else None
    return session.run(name, lambda backup_dir: fit(
        classifier.model,
        data.train.dataset(batch, shuffle_seed=spec.seed, augment=augment), data.val.dataset(batch),
        examples=len(data.train),
        unit=data.train.unit,
        name=name,
        epochs=epochs or spec.fine_tune_epochs,
        learning_rate=spec.backbone_learning_rate,
        global_batch=batch,
        patience=spec.patience,
        reporter=reporter,
        class_weight=feature_extraction.class_weights(data, spec),
        backup_dir=backup_dir,
        compiled=compiled,
        decay_steps=decay_steps(data, spec),
    ))


def decay_steps(data: Dataset, spec: TrainingSpec) -> int:
    """The fine-tuning schedule's length: every step of the spec's fine-tune epochs."""
    return spec.fine_tune_epochs * math.ceil(len(data.train) / feature_extraction.global_batch(spec))


def train(classifier: Classifier, data: Dataset, spec: TrainingSpec, reporter, session: TrainingSession,
          store: FeatureStore) -> list[Phase]:
    phases = feature_extraction.train(classifier, data, spec, reporter, session, store)
    if spec.gradual:
        return phases + _gradual(classifier, data, spec, reporter, session, phases[-1])
    return phases + [fit_backbone(classifier, data, spec, reporter, session, unfreeze(classifier, spec))]


def unfreeze(classifier: Classifier, spec: TrainingSpec) -> str:
    """Unfreeze what the spec says (top blocks, or top layers); returns the phase's name."""
    if spec.unfreeze_blocks is not None:
        unfrozen = unfreeze_top_blocks(classifier, spec.unfreeze_blocks)
        name = f"fine-tune top {spec.unfreeze_blocks} blocks"
    else:
        unfrozen = unfreeze_top(classifier, spec.unfreeze)
        name = f"fine-tune top {len(unfrozen)}"
    if not unfrozen:
        raise FactoryError("--unfreeze 0 leaves nothing to fine-tune; use --strategy feature-extraction")
    return name


def _gradual(classifier, data, spec: TrainingSpec, reporter, session, head_phase: Phase) -> list[Phase]:
    limit = spec.unfreeze_blocks or len(layer_groups(classifier))
    phases, best = [], head_phase.best_val_loss
    for blocks in range(1, limit + 1):
        unfreeze_top_blocks(classifier, blocks)
        phase = fit_backbone(classifier, data, spec, reporter, session, f"gradual: top {blocks} blocks")
        phases.append(phase)
        if phase.best_val_loss >= best:
            session.revert_last()  # this stage did not help: keep the previous stage's weights
            reporter.note(f"gradual unfreezing stopped at {blocks} blocks: validation loss stopped improving")
            break
        best = phase.best_val_loss
    return phases
