"""The advisor's race: successive halving, the cost cap and --budget-s, the tie verdict, and
--strategy auto continuing the winning trial (real digits, real EfficientNet-Lite0 weights)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from factory import advisor, backbones, cache, classifier as classifier_lib, pipeline
from factory.classifier import is_batch_norm, layer_groups
from factory.progress import Silent
from factory.specs import BackboneSpec, DataSpec, TrainingSpec
from factory.strategies import fine_tuning
from factory.strategies.session import TrainingSession
from factory.strategies.training import Phase
from targets.tf_setup import keras, tf

FACTORY = [sys.executable, "-c", "from factory.cli import main; main()"]
RACE_SPEC = TrainingSpec(strategy="auto", epochs=10, fine_tune_epochs=2)


@pytest.fixture(scope="module")
def digits_32():
    return pipeline.prepare(DataSpec("digits"), BackboneSpec(input_size=32))


def run_race(prepared, folder, budget_s=None):
    model = classifier_lib.build(prepared.backbone, len(prepared.data.class_names))
    with cache.open_store(model, folder) as store:
        result = advisor.race(model, prepared.data, RACE_SPEC, store, Silent(), TrainingSession(model.model), budget_s)
    return model, result


@pytest.mark.slow
def test_race_halves_the_field_and_stops_the_losers_early(digits_32, tmp_path, monkeypatch):
    monkeypatch.setattr(advisor, "COST_SHARE", 10.0)  # no cost cap: the race runs to its end
    _, race = run_race(digits_32, tmp_path)
    fe, *tuners = race.trials
    assert [t.name for t in tuners] == ["fine-tune top 2 blocks", "fine-tune top 5 blocks", "fine-tune all"]
    assert fe.images == 0 and fe.correct is not None and race.head.name == "head"
    steps = sorted(len(t.history) for t in tuners)
    assert steps == [1, 2, 3]  # 3 candidates, then the better 2, then the best one
    first, second, last = sorted(tuners, key=lambda t: len(t.history))
    # each rung doubles the images; a loser was behind the candidates that went on, at that rung
    assert first.images < second.images < last.images
    assert last.history[1][0] - last.history[0][0] == 2 * last.history[0][0]
    # the first rung is FIRST_RUNG of a candidate's recipe, and no trial trains past its recipe
    recipe = fine_tuning.decay_steps(digits_32.data, RACE_SPEC)
    assert first.images // RACE_SPEC.batch_size == max(2, round(recipe * advisor.FIRST_RUNG))
    assert last.images // RACE_SPEC.batch_size == recipe  # 0.15 + 0.3 + 0.6 > 1: rung 3 ends it
    assert first.history[0][1] <= min(second.history[0][1], last.history[0][1])
    assert second.history[1][1] <= last.history[1][1]
    assert first.stopped.startswith("behind") and second.stopped.startswith("behind") and not last.stopped
    assert race.pick in race.tied
    cheapest = min(race.tied, key=race.full_seconds)
    assert race.pick is cheapest or race.advice().verdict == "leads while training"
    evidence = race.advice().evidence
    assert evidence["cost_share"] > 0 and evidence["race_seconds"] > 0  # uncapped: it may pass 1


def test_the_cost_cap_stops_the_trials(digits_32, tmp_path, monkeypatch):
    monkeypatch.setattr(advisor, "COST_SHARE", 0.01)  # spent as soon as the first trial step is measured
    _, race = run_race(digits_32, tmp_path)
    *others, first = race.trials[1:]  # the dearest trains first
    assert len(first.history) == 1 and first.images > 0  # the first step always runs: it measures the costs
    assert all(t.images == 0 and t.correct is None and t.stopped == "budget" for t in others)
    assert race.budget_reached and race.cap_seconds == pytest.approx(0.01 * race.all_full_seconds())
    assert all(race.full_seconds(t) is not None for t in others)  # projected from the first one's speed
    assert "stopped at its budget" in " ".join(race.advice().reasons)


def test_an_unmeasured_candidate_costs_what_its_nearest_measured_neighbour_does():
    fe, top2, top5, everything = advisor.candidates(TrainingSpec(strategy="auto"))
    race = advisor.Race([fe, top2, top5, everything], Phase("head", 10, 10, 0.3, 0.9, 5.0), shared_seconds=2.0,
                        train_images=1000)
    assert race.full_seconds(top2) is None  # nothing measured yet
    everything.seconds_per_image, top5.seconds_per_image = 0.03, 0.02  # measured dearest first
    assert race.full_seconds(top2) == race.full_seconds(top5)  # from above: nothing cheaper is measured
    top5.seconds_per_image, top2.seconds_per_image, everything.seconds_per_image = None, 0.01, None
    assert race.full_seconds(top5) == race.full_seconds(everything) == race.full_seconds(top2)  # from below


def test_budget_s_stops_the_trials(digits_32, tmp_path):
    _, race = run_race(digits_32, tmp_path, budget_s=1e-3)  # spent by the head, which always trains
    fe, *tuners = race.trials
    assert all(t.images == 0 and t.correct is None and t.stopped == "budget" for t in tuners)
    assert race.pick is fe and race.budget_reached
    advice = race.advice()
    assert advice.flags() == "--strategy feature-extraction"
    assert [c["validation_accuracy"] for c in advice.evidence["candidates"][1:]] == [None, None, None]


def test_the_trial_clock_stops_a_step_at_its_deadline():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensors((np.ones((8, 4)), np.ones((8, 2)))).repeat()
    for deadline, expected in ((0.0, 1), (None, 20)):  # long passed: it stops after the first step
        clock = advisor.TrialClock(deadline)
        model.fit(data, steps_per_epoch=20, epochs=1, verbose=0, callbacks=[clock])
        assert clock.steps == expected
    model.compile("sgd", "mse", steps_per_execution=8)  # 8 + 8 + 4 steps
    for deadline, expected in ((0.0, 8), (None, 20)):
        clock = advisor.TrialClock(deadline)
        model.fit(data, steps_per_epoch=20, epochs=1, verbose=0, callbacks=[clock])
        assert clock.steps == expected
    assert [steps for _, steps in clock.ends] == [8, 16, 20]


def test_candidates_that_unfreeze_the_same_layers_race_once(monkeypatch):
    monkeypatch.setattr(advisor, "FINE_TUNE_CANDIDATES", (2, 30, None))  # Lite0 has 18 blocks: top 30 is all
    model = classifier_lib.build(backbones.resolve(BackboneSpec(input_size=32)), 3)
    tuners = advisor.candidates(TrainingSpec(strategy="auto"))[1:]
    kept = advisor._distinct(tuners, model)
    assert [t.name for t in kept] == ["fine-tune top 2 blocks", "fine-tune top 30 blocks"]
    assert not any(l.trainable for l in model.backbone_layers())  # left as it was: the head's model


def synthetic_race(fe_correct, ft_correct, ft_finished=True) -> advisor.Race:
    """A race whose validation results are given: feature extraction against top-2 fine-tuning,
    whose trial ran its whole recipe or a quarter of it."""
    fe, ft = advisor.candidates(TrainingSpec(strategy="auto"))[:2]
    for trial, correct in ((fe, fe_correct), (ft, ft_correct)):
        trial.correct = np.asarray(correct, bool)
        trial.history = [(trial.images, trial.accuracy)]
    ft.images, ft.seconds_per_image, ft.validation_seconds = 250, 0.01, 1.0
    ft.recipe_images = 250 if ft_finished else 1000
    race = advisor.Race([fe, ft], Phase("head", 10, 10, 0.3, 0.9, 5.0), shared_seconds=2.0, train_images=1000)
    advisor._verdict(race, seed=0)
    return race


def test_a_difference_within_the_noise_is_too_close_to_call():
    rng = np.random.default_rng(0)
    fe = rng.random(400) < 0.90
    ft = fe.copy()
    ft[np.flatnonzero(~fe)[:3]] = True  # fine-tuning gets 3 more of 400 right: within the noise
    race = synthetic_race(fe, ft)
    advice = race.advice()
    assert race.trials[1].accuracy > race.trials[0].accuracy
    assert advice.verdict == "too close to call" and len(race.tied) == 2
    assert advice.flags() == "--strategy feature-extraction"  # the cheaper one
    assert "take the cheaper one, feature-extraction" in advice.reasons[0]


def test_a_trial_that_leads_short_of_its_recipe_is_picked_over_a_finished_tie():
    rng = np.random.default_rng(0)
    fe = rng.random(400) < 0.90
    ft = fe.copy()
    ft[np.flatnonzero(~fe)[:3]] = True  # 3 more of 400 right after a quarter of its recipe
    race = synthetic_race(fe, ft, ft_finished=False)
    advice = race.advice()
    assert len(race.tied) == 2 and advice.verdict == "leads while training"
    assert advice.flags() == "--strategy fine-tune --unfreeze-blocks 2"
    assert "after 0.25 of its 5 epochs" in advice.reasons[0] and "goes on from here" in advice.reasons[0]
    behind = synthetic_race(ft, fe, ft_finished=False)  # the same, with feature extraction ahead
    assert behind.pick is behind.trials[0] and behind.advice().verdict == "too close to call"


def test_a_clear_lead_picks_the_leader():
    rng = np.random.default_rng(0)
    fe = rng.random(400) < 0.85
    ft = fe.copy()
    ft[np.flatnonzero(~fe)[:30]] = True  # 30 more of 400 right: 7.5 points
    race = synthetic_race(fe, ft)
    advice = race.advice()
    assert advice.verdict == "clear" and race.tied == [race.trials[1]]
    assert advice.flags() == "--strategy fine-tune --unfreeze-blocks 2"
    low = race.trials[0].behind[1]
    assert 0 < low < 0.075 and "over feature-extraction" in advice.reasons[0]


def test_auto_continues_the_winning_trial(digits_32, tmp_path, monkeypatch):
    monkeypatch.setattr(advisor, "FINE_TUNE_CANDIDATES", (2,))
    model, race = run_race(digits_32, tmp_path)
    trial = race.trials[1]
    race.pick = trial  # whatever the verdict: what happens to a fine-tuning pick
    trial_weights = [w.copy() for w in trial.classifier.model.get_weights()]
    trial_steps = trial.images // RACE_SPEC.batch_size
    seen = {}
    real_fit = fine_tuning.fit

    def recording_fit(model_to_train, *args, **kwargs):
        seen["weights"] = model_to_train.get_weights()
        seen["trainable"] = {l.name for l in model_to_train.layers if l.trainable and l.trainable_weights}
        seen["epochs"], seen["compiled"] = kwargs["epochs"], kwargs["compiled"]
        seen["step"] = int(model_to_train.optimizer.iterations.numpy())
        phase = real_fit(model_to_train, *args, **kwargs)
        seen["trained"], seen["phase"] = model_to_train.get_weights(), phase
        return phase

    monkeypatch.setattr(fine_tuning, "fit", recording_fit)
    chosen, phases = advisor.train_winner(race, model, digits_32.data, Silent())
    # it goes on from the trial: its weights, its optimizer, where its learning-rate schedule stands
    assert all(np.array_equal(a, b) for a, b in zip(seen["weights"], trial_weights))
    assert seen["compiled"] and seen["step"] == trial_steps > 0
    top_two = {l.name for _, layers in layer_groups(model)[-2:] for l in layers if l.weights and not is_batch_norm(l)}
    assert seen["trainable"] == top_two | {"factory_head_classifier"}
    assert {l.name for l in model.model.layers if l.trainable and l.trainable_weights} == seen["trainable"]
    recipe = fine_tuning.decay_steps(digits_32.data, RACE_SPEC)  # what the race trained counts
    assert seen["epochs"] == -(-(recipe - trial_steps) // (recipe // RACE_SPEC.fine_tune_epochs))
    assert chosen.strategy == "fine-tune" and chosen.unfreeze_blocks == 2
    assert [p.name for p in phases] == ["head", "race: fine-tune top 2 blocks", "fine-tune top 2 blocks"]
    assert all(np.array_equal(a, b) for a, b in zip(model.model.get_weights(), seen["trained"]))


def test_auto_keeps_the_trial_when_the_rest_of_the_recipe_does_not_help(digits_32, tmp_path, monkeypatch):
    monkeypatch.setattr(advisor, "FINE_TUNE_CANDIDATES", (2,))
    model, race = run_race(digits_32, tmp_path)
    race.pick = trial = race.trials[1]
    trial_weights = [w.copy() for w in trial.classifier.model.get_weights()]

    def worse_fit(model_to_train, *args, **kwargs):  # training that moves the weights and loses
        model_to_train.set_weights([w + 0.5 for w in model_to_train.get_weights()])
        return Phase(kwargs["name"], 1, 1, trial.validation_loss + 1.0, 0.0, 0.1)

    monkeypatch.setattr(fine_tuning, "fit", worse_fit)
    notes = []
    reporter = Silent()
    reporter.note = notes.append
    advisor.train_winner(race, model, digits_32.data, reporter)
    assert all(np.array_equal(a, b) for a, b in zip(model.model.get_weights(), trial_weights))
    assert any("keeping the trial's weights" in line for line in notes)


def test_a_trial_that_ran_its_whole_recipe_is_not_trained_again(digits_32, tmp_path, monkeypatch):
    monkeypatch.setattr(advisor, "FINE_TUNE_CANDIDATES", (2,))
    model, race = run_race(digits_32, tmp_path)
    race.pick = trial = race.trials[1]
    trial.images = trial.recipe_images  # as if its rungs had reached the end of its recipe
    trial_weights = [w.copy() for w in trial.classifier.model.get_weights()]
    monkeypatch.setattr(fine_tuning, "fit", lambda *a, **k: pytest.fail("a finished recipe trained on"))
    _, phases = advisor.train_winner(race, model, digits_32.data, Silent())
    assert [p.name for p in phases] == ["head", "race: fine-tune top 2 blocks"]
    assert all(np.array_equal(a, b) for a, b in zip(model.model.get_weights(), trial_weights))


def test_the_first_rung_runs_dearest_first_and_later_rungs_best_first(digits_32, tmp_path, monkeypatch):
    monkeypatch.setattr(advisor, "COST_SHARE", 10.0)  # no cost cap
    accuracy = {"fine-tune top 2 blocks": 0.6, "fine-tune top 5 blocks": 0.8, "fine-tune all": 0.4}
    order = []

    def measured_step(trial, data, steps, batch, execution, rung, reporter, deadline):  # no training: an order
        order.append((rung, trial.name))
        trial.images += steps * batch
        trial.seconds_per_image, trial.validation_seconds = 1e-4, 0.01
        trial.correct = np.arange(len(data.val.labels)) < accuracy[trial.name] * len(data.val.labels)
        trial.history.append((trial.images, trial.accuracy))
        return steps

    monkeypatch.setattr(advisor, "_step", measured_step)
    _, race = run_race(digits_32, tmp_path)
    assert order == [(0, "fine-tune all"), (0, "fine-tune top 5 blocks"), (0, "fine-tune top 2 blocks"),
                     (1, "fine-tune top 5 blocks"), (1, "fine-tune top 2 blocks"), (2, "fine-tune top 5 blocks")]
    recipe = fine_tuning.decay_steps(digits_32.data, RACE_SPEC)
    first_rung = max(2, round(recipe * advisor.FIRST_RUNG)) / (recipe // RACE_SPEC.fine_tune_epochs)
    assert race.trials[3].stopped == f"behind after {first_rung:.2f} epochs"  # all, the worst


@pytest.mark.slow
def test_build_auto_trains_the_race_pick_and_advise_prints_it(tmp_path):
    env = {**os.environ, "EDGEFACTORY_CACHE": str(tmp_path / "cache")}  # cold: the budget below is spent
    result = subprocess.run(FACTORY + ["build", "--quiet", "--data", "digits", "--input-size", "32",
                                       "--strategy", "auto", "--fine-tune-epochs", "2", "--latency-runs", "0",
                                       "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=900,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    strategy = json.loads((tmp_path / "b" / "manifest.json").read_text())["strategy"]
    candidates = strategy["advice"]["evidence"]["candidates"]
    picked = [c["name"] for c in candidates if c["picked"]]
    assert len(candidates) == 4 and len(picked) == 1 and strategy["advice"]["reasons"]
    phases = [p["name"] for p in strategy["phases"]]
    if picked == ["feature-extraction"]:
        assert strategy["name"] == "feature-extraction" and phases == ["head"]
    else:
        assert strategy["name"] == "fine-tune" and phases[:2] == ["head", f"race: {picked[0]}"]
        finished = next(c["finished"] for c in candidates if c["picked"])
        assert len(phases) == (2 if finished else 3) and strategy["trainable_layers"] > 1

    env["EDGEFACTORY_CACHE"] = str(tmp_path / "cold-cache")
    advised = subprocess.run(FACTORY + ["advise", "--quiet", "--data", "digits", "--input-size", "32",
                                        "--budget-s", "0.001"], capture_output=True, text=True, timeout=600, env=env)
    assert advised.returncode == 0, advised.stderr[-2000:]
    rows = re.findall(r"^(feature-extraction|fine-tune \S+(?: \S+ blocks)?)\s+(\S+)", advised.stdout, re.M)
    assert [name for name, _ in rows] == [c["name"] for c in candidates]
    assert [accuracy for _, accuracy in rows[1:]] == ["-", "-", "-"]  # the budget stopped every trial
    assert "recommendation: --strategy feature-extraction" in advised.stdout


def test_advise_and_auto_refuse_a_cluster(tmp_path):
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                    "task": {"type": "worker", "index": 0}})}
    for args in (["advise", "--data", "digits"],
                 ["build", "--data", "digits", "--strategy", "auto", "--out", str(tmp_path / "x")]):
        result = subprocess.run(FACTORY + args, capture_output=True, text=True, timeout=300,
                                env={**os.environ, **env})
        assert result.returncode == 2 and "runs in one process" in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "x").exists()


def test_options_the_race_cannot_honour_are_refused_before_any_work(tmp_path):
    from factory.specs import BuildSpec
    from targets.errors import FactoryError

    with pytest.raises(FactoryError, match="--budget-s 0 must be a positive number"):
        TrainingSpec(strategy="auto", advisor_budget_s=0)
    with pytest.raises(FactoryError, match="--resume does not work with --strategy auto"):
        BuildSpec(DataSpec("digits"), tmp_path / "out", training=TrainingSpec(strategy="auto"), resume=True)
