"""Feature cache, block unfreezing, resume after a kill, advisor and gradient-flow report."""
import json
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from factory import advisor, backbones, classifier
from factory.classifier import is_batch_norm, layer_groups, unfreeze_top_blocks
from factory.gradient_flow import gradient_flow
from factory.specs import BackboneSpec


@pytest.fixture
def lite0_32():
    """A fresh EfficientNet-Lite0 classifier per test: tests freeze and unfreeze its layers."""
    return classifier.build(backbones.resolve(BackboneSpec(input_size=32)), 10)


def test_blocks_are_stem_numbered_blocks_and_top(lite0_32):
    names = [name for name, _ in layer_groups(lite0_32)]
    assert names == ["stem"] + [f"block{i}" for i in range(16)] + ["top"]
    unfrozen = unfreeze_top_blocks(lite0_32, 2)
    assert unfrozen and all(n.startswith(("block15_", "top_")) for n in unfrozen)
    assert not any(l.trainable for l in lite0_32.backbone_layers() if is_batch_norm(l))
    unfreeze_top_blocks(lite0_32, 0)
    assert not any(l.trainable for l in lite0_32.backbone_layers())


def test_gradient_flow_reports_only_unfrozen_blocks(fashion_small):
    model = classifier.build(backbones.resolve(BackboneSpec(input_size=64)), 10)
    unfreeze_top_blocks(model, 2)
    rows = gradient_flow(model, fashion_small.train.load_images(), fashion_small.train.labels, batches=1)
    by_group = {r["group"]: r for r in rows}
    assert by_group["block15"]["grad_norm"] > 0 and by_group["top"]["grad_norm"] > 0
    assert by_group["head"]["grad_norm"] > 0
    assert by_group["block14"]["trainable_params"] == 0 and by_group["block14"]["grad_norm"] == 0


def test_advisor_rules():
    base = {"images_per_class_min": 300, "probe_accuracy": 0.85, "gain_last_half": 0.03}
    assert advisor.recommend(base).strategy == "fine-tune"
    assert advisor.recommend(base).unfreeze_blocks == 3
    assert advisor.recommend({**base, "images_per_class_min": 20}).strategy == "feature-extraction"
    assert advisor.recommend({**base, "probe_accuracy": 0.99}).strategy == "feature-extraction"
    assert advisor.recommend({**base, "gain_last_half": 0.0}).strategy == "feature-extraction"


def test_advisor_probe_learning_curve_on_real_data(fashion_small, tmp_path):
    from factory import cache
    from factory.progress import Silent
    from factory.strategies.feature_extraction import cached_features

    model = classifier.build(backbones.resolve(BackboneSpec(input_size=64)), 10)
    with cache.open_store(model, tmp_path / "cache") as store:
        train, val = cached_features(fashion_small, store, Silent(), tmp_path, seed=0)
        evidence = advisor.probe(train, val, 10, seed=0)
    assert list(evidence["learning_curve"]) == ["25%", "50%", "100%"]
    assert evidence["probe_accuracy"] > 0.5 and evidence["images_per_class_min"] == 42
    assert advisor.recommend(evidence).reasons


FACTORY = [sys.executable, "-c", "from factory.cli import main; main()"]


def test_build_resumes_after_being_killed(tmp_path):
    out = tmp_path / "build"
    args = FACTORY + ["build", "--data", "digits", "--input-size", "32", "--strategy", "fine-tune",
                      "--unfreeze-blocks", "2", "--epochs", "5", "--fine-tune-epochs", "4", "--patience", "10",
                      "--latency-runs", "0", "--no-cache", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(600, process.kill)  # a build that never reaches the epoch fails, not hangs
    watchdog.start()
    try:
        for line in process.stderr:  # wait until fine-tuning finished its first epoch, then kill -9
            if "fine-tune top 2 blocks epoch 1/4:" in line:
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=60)
    finally:
        watchdog.cancel()
    assert process.returncode == -signal.SIGKILL and not out.exists()
    checkpoint = tmp_path / ".build.checkpoint"
    assert json.loads((checkpoint / "state.json").read_text())["phases"][0]["name"] == "head"

    different = subprocess.run(args[:-2] + ["--seed", "1", "--resume", "--out", str(out)], capture_output=True,
                               text=True, timeout=600)
    assert different.returncode == 2 and "different recipe" in different.stderr

    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after 1 finished phase" in resumed.stderr
    assert "head epoch" not in resumed.stderr  # phase 1 is not run again
    assert "fine-tune top 2 blocks epoch 1/4:" not in resumed.stderr  # nor the finished epoch
    assert "fine-tune top 2 blocks epoch 2/4:" in resumed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["name"] for p in manifest["strategy"]["phases"]] == ["head", "fine-tune top 2 blocks"]
    assert manifest["metrics"]["keras_test_accuracy"] > 0.5
    assert not checkpoint.exists()


def advise_in_a_fresh_process(*args) -> tuple[str, int | None]:
    """`factory advise`'s recommendation, as printed: (strategy, unfreeze blocks or None)."""
    result = subprocess.run(FACTORY + ["advise", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"recommendation: --strategy (\S+)(?: --unfreeze-blocks (\d+))?", result.stdout)
    return match.group(1), int(match.group(2)) if match.group(2) else None


def test_strategy_auto_follows_the_advisor(tmp_path):
    result = subprocess.run(FACTORY + ["build", "--quiet", "--data", "digits", "--input-size", "32", "--strategy", "auto",
                                       "--fine-tune-epochs", "2", "--latency-runs", "0", "--out", str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    strategy = json.loads((tmp_path / "b" / "manifest.json").read_text())["strategy"]
    advice = strategy["advice"]
    assert strategy["name"] == advice["strategy"] and advice["reasons"]
    assert set(advice["evidence"]["learning_curve"]) == {"25%", "50%", "100%"}
    # the advisor run on its own reaches the same verdict, and the build trained exactly that
    recommended, blocks = advise_in_a_fresh_process("--data", "digits", "--input-size", "32")
    assert strategy["name"] == recommended
    phases = [p["name"] for p in strategy["phases"]]
    if recommended == "fine-tune":
        assert phases == ["head", f"fine-tune top {blocks} blocks"] and strategy["trainable_layers"] > 1
    else:
        assert phases == ["head"] and strategy["trainable_layers"] == 1
