"""Strategy advisor: a measured race between the candidate strategies on the user's own split.

The candidates are feature extraction and fine-tuning the top 2 blocks, the top 5 blocks or
the whole backbone (FINE_TUNE_CANDIDATES). They share their first phase, the head trained on
frozen, cached features, which *is* the feature-extraction candidate trained fully. Each
fine-tuning candidate then runs the first steps of its own full recipe (its own copy of the
model, augmented images streamed from the data stage, BatchNorm frozen, the learning rate on
the schedule of a full build), so a trial is the beginning of a real build and
`--strategy auto` continues the winning one where it stopped.

Successive halving: every fine-tuning candidate first trains FIRST_RUNG (COST_SHARE / 2) of
its recipe, dearest first (its measured cost sets the cap for the rest); together that is
half of what the race may spend on them, and a candidate that unfreezes more starts lower and
needs that long to show where it goes. Then the better half goes on with twice as many
steps, and so on until one is left, the recipes are done or the budget is spent.

Every candidate is measured on the validation split after its last step. The verdict is a
paired bootstrap over those validation images: a candidate whose accuracy is not clearly
below the leader's (the 95% interval of the difference reaches 0) is tied with it. Among tied
candidates the cheapest to train fully is recommended ("too close to call: take the cheaper
one"), except when the leader is a trial stopped short of its recipe: its recipe goes on from
there (`--strategy auto` keeps its weights unless training on lowers the validation loss), so
it gives way only to a cheaper tie as far along an unfinished recipe, not to a finished one
such as feature extraction ("leads while training"). Nothing here is a threshold fitted to
some dataset.

The race costs at most COST_SHARE of training every candidate fully (extraction counted once,
as the feature cache shares it; full fine-tuning projected from the speed measured in the
race), and at most `budget_s` seconds when given (checked after every execution of a trial's
steps; the head is always trained, as every candidate needs it).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from factory import cache as cache_lib, classifier as classifier_lib, evaluation
from factory.classifier import freeze_backbone
from factory.progress import Reporter, duration_text
from factory.specs import ADVISOR_COST_SHARE as COST_SHARE, TrainingSpec
from factory.strategies import feature_extraction, fine_tuning
from factory.strategies.session import TrainingSession
from factory.strategies.training import STEPS_PER_EXECUTION, Phase, augmenter, fit
from targets.tf_setup import keras

FINE_TUNE_CANDIDATES = (2, 5, None)  # top K blocks; None: the whole backbone
FIRST_RUNG = COST_SHARE / 2  # of a candidate's fine-tune epochs: all first rungs spend half the race's share
CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass
class Trial:
    """One candidate in the race and what was measured of it."""

    name: str
    spec: TrainingSpec  # the candidate's recipe
    classifier: classifier_lib.Classifier | None = None  # its own model (fine-tuning candidates)
    images: int = 0  # images trained on in the race (fine-tuning steps)
    seconds: float = 0.0  # race time spent on it: training and validation
    seconds_per_image: float | None = None  # training speed, from its latest step
    warmup_seconds: float = 0.0  # tracing its training function, once
    validation_seconds: float | None = None  # one pass over the validation split
    correct: np.ndarray | None = None  # per validation image, after its last step
    validation_loss: float | None = None
    recipe_images: int = 0  # a fine-tuning candidate's whole recipe, in images trained
    stopped: str = ""  # why it stopped before the end of the race
    interval: tuple[float, float] | None = None  # bootstrap interval of its validation accuracy
    behind: tuple[float, float, float] | None = None  # leader minus it: mean, interval low, high
    predict: object = None  # cached inference function of its model
    history: list = field(default_factory=list)  # (images trained, validation accuracy) after each step

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else float(self.correct.mean())

    @property
    def fine_tunes(self) -> bool:
        return self.spec.fine_tunes

    @property
    def finished(self) -> bool:
        """Trained as fully as a build would: its accuracy is final, not a floor."""
        return self.images >= self.recipe_images


@dataclass
class Race:
    trials: list[Trial]
    head: Phase  # the shared first phase
    shared_seconds: float  # before the head's training: extraction into the cache, feature files
    train_images: int  # what an epoch trains: its steps times the batch
    execution: int = 1  # the trials' steps per execution (the clock's and the deadline's grain)
    seconds: float = 0.0
    cap_seconds: float | None = None
    budget_reached: bool = False
    unit: str = "images"  # what the validation examples are: images or texts
    pick: Trial | None = None
    tied: list[Trial] = field(default_factory=list)

    def full_seconds(self, trial: Trial) -> float | None:
        """Projected wall time of a build that trains `trial`'s candidate fully (cache warm): a
        candidate not measured yet costs what its nearest measured neighbour does, None before
        any fine-tuning was measured."""
        if not trial.fine_tunes:
            return self.head.seconds
        like = self._costed_like(trial)
        if like is None:
            return None
        epoch = self.train_images * like.seconds_per_image + (like.validation_seconds or 0)
        return self.head.seconds + like.warmup_seconds + trial.spec.fine_tune_epochs * epoch

    def all_full_seconds(self) -> float:
        """Training every measured candidate fully, extraction once (the cache shares it)."""
        return self.shared_seconds + sum(s for s in map(self.full_seconds, self.trials) if s is not None)

    def _measured(self) -> list[Trial]:
        """The fine-tuning candidates whose training speed has been measured."""
        return [t for t in self.trials if t.fine_tunes and t.seconds_per_image is not None]

    def _costed_like(self, trial: Trial) -> Trial | None:
        """Whose measurements stand for `trial`'s costs: its own, else the nearest measured
        candidate's, from below when there is one (the candidates unfreeze more and more)."""
        if trial.seconds_per_image is not None:
            return trial
        measured = {id(t) for t in self._measured()}  # by identity: trials hold arrays
        place = [id(t) for t in self.trials].index(id(trial))
        cheaper = [t for t in self.trials[:place] if id(t) in measured]
        dearer = [t for t in self.trials[place + 1:] if id(t) in measured]
        return cheaper[-1] if cheaper else dearer[0] if dearer else None

    def least_step_seconds(self, trial: Trial, batch: int) -> float:
        """The least a step of `trial` costs: its warm-up (the first time), one execution, its
        validation pass; from its own measurements, else its nearest measured neighbour's."""
        like = self._costed_like(trial)
        if like is None:
            return 0.0
        warmup = like.warmup_seconds if not trial.images else 0.0
        return warmup + self.execution * batch * like.seconds_per_image + (like.validation_seconds or 0.0)

    def deadline(self, start: float, budget_s: float | None) -> float | None:
        """When the trials must stop: at COST_SHARE of training every candidate fully (projected
        from the speeds measured so far), or at `budget_s`, less the validation pass still to
        come; None while nothing has been measured and no budget was given."""
        measured = self._measured()
        caps = [budget_s] if budget_s is not None else []
        if measured:
            caps.append(COST_SHARE * self.all_full_seconds())
        if not caps:
            return None
        self.cap_seconds = min(caps)
        validation = max((t.validation_seconds for t in measured), default=0.0)
        return start + self.cap_seconds - validation

    def advice(self) -> Advice:
        pick = self.pick
        spec = pick.spec
        leader = max(self.tied, key=lambda t: (t.accuracy, t is pick))
        if len(self.tied) == 1:
            runner = max((t for t in self.trials if t is not pick and t.correct is not None),
                         key=lambda t: t.accuracy, default=None)
            verdict = "clear"
            reason = f"{pick.name} leads with {pick.accuracy:.3f} validation accuracy"
            if runner is not None:
                mean, low, high = runner.behind
                reason += (f", {100 * mean:+.1f} points over {runner.name} "
                           f"(95% interval {100 * low:+.1f} to {100 * high:+.1f})")
        else:
            tied = [t for t in self.tied if t is not leader]
            others = ", ".join(f"{t.name} ({t.accuracy:.3f}, 95% interval of the difference "
                               f"{100 * t.behind[1]:+.1f} to {100 * t.behind[2]:+.1f} points)" for t in tied)
            within = f"{'is' if len(tied) == 1 else 'are'} within the noise of the validation split"
            if pick is leader and not pick.finished:
                verdict = "leads while training"
                reason = (f"{leader.name} leads ({leader.accuracy:.3f}) after {leader.images / self.train_images:.2f} "
                          f"of its {spec.fine_tune_epochs} epochs; {others} {within}, but not as far along an "
                          f"unfinished recipe, and {leader.name}'s recipe goes on from here")
            else:
                verdict = "too close to call"
                reason = (f"too close to call: {leader.name} ({leader.accuracy:.3f}) and {others} are within the "
                          f"noise of the validation split: take the cheaper one, {pick.name}")
        reasons = [reason]
        if self.budget_reached:
            reasons.append("the race stopped at its budget; more training could change the order")
        return Advice(spec.strategy, spec.unfreeze_blocks, spec.unfreeze, verdict, reasons, self.evidence())

    def evidence(self) -> dict:
        full = self.all_full_seconds()
        return {
            "candidates": [{
                "name": t.name, "validation_accuracy": t.accuracy,
                "interval": list(t.interval) if t.interval else None,
                "behind_leader": list(t.behind) if t.behind else None,
                "epochs": round(t.images / self.train_images, 2) if t.fine_tunes else self.head.epochs_run,
                "race_seconds": round(t.seconds, 1),
                "full_seconds": None if self.full_seconds(t) is None else round(self.full_seconds(t), 1),
                "stopped": t.stopped, "finished": t.finished, "tied": t in self.tied, "picked": t is self.pick,
                "steps": [[round(images / self.train_images, 2), round(accuracy, 4)] for images, accuracy in t.history],
            } for t in self.trials],
            "validation_images": int(len(self.trials[0].correct)), "validation_unit": self.unit,
            "race_seconds": round(self.seconds, 1),
            "shared_seconds": round(self.shared_seconds, 1),
            "all_full_seconds": round(full, 1),
            "cost_share": round(self.seconds / full, 3) if full else None,
            "cap_seconds": None if self.cap_seconds is None else round(self.cap_seconds, 1),
            "budget_reached": self.budget_reached,
        }


@dataclass
class Advice:
    strategy: str  # "feature-extraction" or "fine-tune"
    unfreeze_blocks: int | None
    unfreeze: int | None  # fine-tune without blocks: top N layers, None: all
    verdict: str  # "clear", "too close to call" or "leads while training"
    reasons: list[str]
    evidence: dict

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def flags(self) -> str:
        """The recommendation as `factory build` options."""
        if self.strategy != "fine-tune":
            return f"--strategy {self.strategy}"
        if self.unfreeze_blocks is not None:
            return f"--strategy fine-tune --unfreeze-blocks {self.unfreeze_blocks}"
        return f"--strategy fine-tune --unfreeze {'all' if self.unfreeze is None else self.unfreeze}"


class TrialClock(keras.callbacks.Callback):
    """Times a trial step execution by execution (of one batch or more) and stops it once
    `deadline` (perf_counter) has passed."""

    def __init__(self, deadline: float | None):
        super().__init__()
        self.deadline, self.ends = deadline, []  # (perf_counter, steps done) at each execution's end

    def on_train_begin(self, logs=None):
        self.begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((time.perf_counter(), batch + 1))
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.model.stop_training = True

    @property
    def steps(self) -> int:
        return self.ends[-1][1] if self.ends else 0

    def seconds_per_step(self) -> tuple[float, float]:
        """(seconds per step, warm-up seconds) from two executions or more: the first also
        traces the training function, so the speed comes from the ones after it."""
        (first, first_steps), (last, steps) = self.ends[0], self.ends[-1]
        per_step = (last - first) / (steps - first_steps)
        return per_step, max(0.0, first - self.begin - first_steps * per_step)


def candidates(spec: TrainingSpec) -> list[Trial]:
    """Feature extraction, then each fine-tuning candidate, cheapest first."""
    spec = dataclasses.replace(spec, gradual=False, advisor_budget_s=None)  # each candidate: one plain recipe
    trials = [Trial("feature-extraction", dataclasses.replace(spec, strategy="feature-extraction"))]
    for blocks in FINE_TUNE_CANDIDATES:
        if blocks is None:
            recipe = dataclasses.replace(spec, strategy="fine-tune", unfreeze=None, unfreeze_blocks=None)
            trials.append(Trial("fine-tune all", recipe))
        else:
            recipe = dataclasses.replace(spec, strategy="fine-tune", unfreeze_blocks=blocks)
            trials.append(Trial(f"fine-tune top {blocks} blocks", recipe))
    return trials


def race(classifier, data, spec: TrainingSpec, store: cache_lib.FeatureStore, reporter: Reporter,
         session: TrainingSession, budget_s: float | None = None) -> Race:
    """Train the head on `classifier` (kept: it is the feature-extraction candidate), race the
    fine-tuning candidates on copies, and pick one (see the module's doc)."""
    start = time.perf_counter()
    trials = candidates(spec)
    fe, tuners = trials[0], trials[1:]
    head = feature_extraction.train(classifier, data, fe.spec, reporter, session, store)[0]
    batch = feature_extraction.global_batch(spec)
    full_steps = fine_tuning.decay_steps(data, spec)  # a fine-tuning candidate's whole recipe
    steps = max(2, round(full_steps * FIRST_RUNG))  # 2: a speed beside the trace
    result = Race(trials, head, time.perf_counter() - start - head.seconds,
                  train_images=full_steps // spec.fine_tune_epochs * batch,
                  execution=min(STEPS_PER_EXECUTION, max(1, steps // 4)),  # as a build runs, 4 a rung or more
                  unit=data.val.unit)
    measure_start = time.perf_counter()
    probs = evaluation.evaluate_on_features(classifier.head, store, data.val)
    _record(fe, probs, data.val.labels)
    fe.seconds = head.seconds + time.perf_counter() - measure_start
    head_weights = classifier.model.get_weights()
    tuners = _distinct(tuners, classifier)
    result.trials = [fe, *tuners]
    for trial in tuners:
        trial.recipe_images = full_steps * batch
    alive, rung = list(tuners), 0
    while alive:
        # the first rung dearest first (what it costs sets the cap for the rest), then best first
        for trial in reversed(alive) if rung == 0 else alive:
            deadline = result.deadline(start, budget_s)
            if deadline is not None and time.perf_counter() + result.least_step_seconds(trial, batch) >= deadline:
                trial.stopped = "budget"
                result.budget_reached = True
                continue
            if trial.classifier is None:  # its own copy of the model, from the trained head
                trial.classifier = classifier_lib.build(classifier.backbone, len(data.class_names), spec.dropout)
                trial.classifier.model.set_weights(head_weights)
                fine_tuning.unfreeze(trial.classifier, trial.spec)
                trial.predict = classifier_lib.inference_fn(trial.classifier.model)
            todo = min(steps, (trial.recipe_images - trial.images) // batch)  # a trial ends with its recipe
            if todo and _step(trial, data, todo, batch, result.execution, rung, reporter, deadline) < todo:
                trial.stopped = "budget"  # cut short: not comparable with the others at this rung
                result.budget_reached = True
        alive = [t for t in alive if not t.stopped]
        if len(alive) <= 1 or all(t.finished for t in alive):
            break
        alive.sort(key=lambda t: (-t.accuracy, result.full_seconds(t)))
        keep = math.ceil(len(alive) / 2)
        for trial in alive[keep:]:
            trial.stopped = f"behind after {trial.images / result.train_images:.2f} epochs"
        alive, rung, steps = alive[:keep], rung + 1, steps * 2  # the better half, twice the images each
    result.seconds = time.perf_counter() - start
    _verdict(result, spec.seed)
    return result


def _distinct(tuners: list[Trial], classifier) -> list[Trial]:
    """The fine-tuning candidates that unfreeze different layers: on a backbone with fewer
    blocks than a candidate asks for, "top K blocks" is all of it, and races once."""
    kept, seen = [], []
    for trial in tuners:
        fine_tuning.unfreeze(classifier, trial.spec)
        unfrozen = {layer.name for layer in classifier.model.layers if layer.trainable and layer.weights}
        if unfrozen not in seen:
            kept.append(trial)
            seen.append(unfrozen)
    freeze_backbone(classifier)
    return kept


def _record(trial: Trial, probs: np.ndarray, labels: np.ndarray) -> None:
    trial.correct = probs.argmax(1) == labels
    trial.validation_loss = _loss(probs, labels)


def _loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true labels."""
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-7))))


def _step(trial: Trial, data, steps: int, batch: int, execution: int, rung: int, reporter, deadline) -> int:
    """Train `trial` for `steps` more batches, `execution` at a time (at most until `deadline`),
    then validate it; returns the batches it trained."""
    spec = trial.spec
    augment = augmenter(spec.seed) if spec.augments else None
    train = data.train.dataset(batch, shuffle_seed=spec.seed + rung, augment=augment).repeat()
    clock = TrialClock(deadline)
    started = time.perf_counter()
    fit(trial.classifier.model, train, None, steps_per_epoch=steps, examples=steps * batch, unit=data.train.unit,
        name=f"race: {trial.name}",
        epochs=1, learning_rate=spec.backbone_learning_rate, global_batch=batch, patience=spec.patience,
        reporter=reporter, class_weight=feature_extraction.class_weights(data, spec), compiled=trial.images > 0,
        steps_per_execution=execution, callbacks=(clock,), decay_steps=trial.recipe_images // batch)
    if len(clock.ends) > 1:  # the first execution is mostly the trace: no speed from it alone
        per_step, warmup = clock.seconds_per_step()
        trial.seconds_per_image = per_step / batch
        if not trial.images:
            trial.warmup_seconds = warmup
    trial.images += clock.steps * batch
    validated = time.perf_counter()
    probs = evaluation.predictions(trial.predict, data.val, reporter, description=f"race: {trial.name}: validation")
    _record(trial, probs, data.val.labels)
    trial.history.append((trial.images, trial.accuracy))
    trial.validation_seconds = time.perf_counter() - validated
    trial.seconds += time.perf_counter() - started
    return clock.steps


def _verdict(result: Race, seed: int) -> None:
    """The leader, the candidates tied with it (paired bootstrap on the validation split) and
    the pick: the cheapest of those to train fully, unless the leader is a trial stopped short of
    its recipe (see the module's doc)."""
    measured = [t for t in result.trials if t.correct is not None]
    leader = max(measured, key=lambda t: (t.accuracy, -(result.full_seconds(t) or math.inf)))
    count = len(leader.correct)
    rng = np.random.default_rng(seed)
    samples = {id(t): [] for t in measured}
    for _ in range(0, RESAMPLES, 200):  # in chunks: [200, n] indices at a time
        picks = rng.integers(0, count, (200, count))
        for trial in measured:
            samples[id(trial)].append(trial.correct[picks].mean(1))
    low, high = (1 - CONFIDENCE) / 2, 1 - (1 - CONFIDENCE) / 2
    lead = np.concatenate(samples[id(leader)])
    for trial in measured:
        accuracy = np.concatenate(samples[id(trial)])
        trial.interval = tuple(float(q) for q in np.quantile(accuracy, [low, high]))
        difference = lead - accuracy
        low_difference, high_difference = (float(q) for q in np.quantile(difference, [low, high]))
        trial.behind = (float(leader.accuracy - trial.accuracy), low_difference, high_difference)
    result.tied = [t for t in measured if t.behind[1] <= 0]
    # a leader short of its recipe gives way only to a cheaper tie measured on an equal footing:
    # one as far along an unfinished recipe (a finished one has no more to come, the leader has)
    equals = [t for t in result.tied if leader.finished or (not t.finished and t.images >= leader.images)]
    result.pick = min([leader, *equals], key=lambda t: result.full_seconds(t) or math.inf)


def train_winner(result: Race, classifier, data, reporter: Reporter) -> tuple[TrainingSpec, list[Phase]]:
    """`--strategy auto`: the race's pick, trained fully. `classifier` already holds the trained
    head; a fine-tuning pick goes on training its trial's model (weights, optimizer and schedule
    as the race left them) for the steps its recipe has left, keeps the trial's weights if that
    does not lower the validation loss, and hands the result to `classifier`. Returns the recipe
    trained and its phases."""
    pick = result.pick
    phases = [result.head]
    for trial in result.trials:  # the other trials' models are not needed any more
        if trial is not pick:
            trial.classifier = trial.predict = None
    if not pick.fine_tunes:
        return pick.spec, phases
    epochs_done = round(pick.images / result.train_images)
    phases.append(Phase(f"race: {pick.name}", epochs_done, epochs_done, pick.validation_loss, pick.accuracy,
                        round(pick.seconds, 2)))
    name = fine_tuning.unfreeze(classifier, pick.spec)  # the same trainable layers as the trial's model
    batch = feature_extraction.global_batch(pick.spec)
    steps_left = (pick.recipe_images - pick.images) // batch
    if steps_left > 0:
        trial_weights = pick.classifier.model.get_weights()
        epochs = math.ceil(steps_left / (result.train_images // batch))  # the schedule ends with the recipe
        # no checkpoint: an auto build cannot --resume (its race would have to run again)
        phases.append(fine_tuning.fit_backbone(pick.classifier, data, pick.spec, reporter,
                                               TrainingSession(pick.classifier.model), name, epochs=epochs,
                                               compiled=True))
        probs = evaluation.predictions(pick.predict, data.val, reporter, description=f"{name}: validation")
        loss = _loss(probs, data.val.labels)  # measured as the trial's was
        if not loss <= pick.validation_loss:  # NaN included: training on diverged
            reporter.note(f"{name}: the rest of the recipe did not lower the race trial's validation loss "
                          f"({pick.validation_loss:.3f}, now {loss:.3f}); keeping the trial's weights")
            pick.classifier.model.set_weights(trial_weights)
    classifier.model.set_weights(pick.classifier.model.get_weights())
    pick.classifier = pick.predict = None
    return pick.spec, phases


def table_lines(evidence: dict) -> list[str]:
    """The race as a table that fits 80 columns."""
    lines = [f"{'candidate':23}{'val acc':>8}{'95% interval':>14}{'epochs':>8}{'race':>8}{'full':>9}  note"]
    for c in evidence["candidates"]:
        accuracy = "-" if c["validation_accuracy"] is None else f"{c['validation_accuracy']:.3f}"
        interval = "-" if not c["interval"] else f"{c['interval'][0]:.3f}-{c['interval'][1]:.3f}"
        full = "-" if c["full_seconds"] is None else duration_text(c["full_seconds"])
        note = "picked" if c["picked"] else "tied" if c["tied"] else c["stopped"] or "behind"
        lines.append(f"{c['name']:23}{accuracy:>8}{interval:>14}{c['epochs']:>8}"
                     f"{duration_text(c['race_seconds']):>8}{full:>9}  {note}")
    share = evidence["cost_share"]
    lines.append(f"race {duration_text(evidence['race_seconds'])}: "
                 + (f"{share:.0%} of training every candidate fully " if share is not None else "")
                 + f"(~{duration_text(evidence['all_full_seconds'])}); "
                 f"{evidence['validation_images']:,} validation {evidence.get('validation_unit', 'images')}")
    return lines
