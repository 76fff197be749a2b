"""Block unfreezing, resume after a kill and the gradient-flow report."""
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from factory import backbones, classifier
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
