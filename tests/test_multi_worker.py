"""Two workers on 127.0.0.1 under MultiWorkerMirroredStrategy (TF_CONFIG), against one process.

Each worker is the real `factory build` command with its own TF_CONFIG, as on a cluster.
"""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

FACTORY = [sys.executable, "-c", "from factory.cli import main; main()"]
BUILD = ["build", "--data", "digits", "--input-size", "32", "--latency-runs", "0", "--target", "tflite"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(args: list[str], logs) -> list[subprocess.Popen]:
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config), "PYTHONUNBUFFERED": "1"}
        processes.append(subprocess.Popen(FACTORY + args, env=env, stdout=logs[index], stderr=subprocess.STDOUT,
                                          text=True))
    return processes


def run_workers(args: list[str], tmp_path, name: str, timeout: float = 600) -> list[str]:
    """Run both workers to the end; their outputs."""
    paths = [tmp_path / f"{name}-{i}.log" for i in range(2)]
    logs = [open(p, "w") for p in paths]
    try:
        processes = start_workers(args, logs)
        for process in processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for p in processes:
                    p.kill()
                raise
    finally:
        for log in logs:
            log.close()
    outputs = [p.read_text() for p in paths]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM features").fetchone()[0]


def test_two_workers_match_one_process_and_only_the_chief_writes(tmp_path):
    cluster_out, single_out = tmp_path / "cluster", tmp_path / "single"
    cache = tmp_path / "cache"
    # the same global batch: 2 workers x 16 = 32 in one process
    outputs = run_workers(BUILD + ["--batch-size", "16", "--out", str(cluster_out), "--cache-dir", str(cache)],
                          tmp_path, "fe")
    single = subprocess.run(FACTORY + BUILD + ["--batch-size", "32", "--out", str(single_out), "--no-cache"],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    cluster_manifest = json.loads((cluster_out / "manifest.json").read_text())
    single_manifest = json.loads((single_out / "manifest.json").read_text())
    accuracy = cluster_manifest["metrics"]["keras_test_accuracy"]
    assert accuracy > 0.7  # digits, 10 classes
    assert abs(accuracy - single_manifest["metrics"]["keras_test_accuracy"]) <= 0.01
    assert cluster_manifest["artifacts"][0]["agreement"] >= 0.99

    # the chief wrote --out once; the other worker says so and left nothing beside it
    assert "the chief (worker 0) writes --out" in outputs[1] and "accuracy on" not in outputs[1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("cluster", ".cluster"))) == ["cluster"]
    # extraction was split between the workers by content hash: each wrote its own share
    shares = [rows(cache / "features" / f"worker-{i}.sqlite") for i in range(2)]
    assert sum(shares) == sum(cluster_manifest["data"]["splits"].values())  # every image once (digits: no duplicates)
    assert min(shares) > 0.3 * sum(shares)


@pytest.mark.slow
def test_killed_workers_resume_from_the_last_epoch(tmp_path):
    out = tmp_path / "build"
    args = BUILD + ["--strategy", "fine-tune", "--unfreeze-blocks", "1", "--epochs", "3", "--fine-tune-epochs", "5",
                    "--patience", "10", "--batch-size", "16", "--no-cache", "--out", str(out)]
    checkpoint = tmp_path / ".build.checkpoint"
    logs = [open(tmp_path / f"killed-{i}.log", "w") for i in range(2)]
    processes = start_workers(args, logs)
    watchdog = threading.Timer(600, lambda: [p.kill() for p in processes])
    watchdog.start()
    try:  # kill -9 both workers once the fine-tuning phase has finished (and backed up) an epoch
        while "fine-tune top 1 blocks epoch 1/5:" not in (tmp_path / "killed-0.log").read_text():
            assert all(p.poll() is None for p in processes), (tmp_path / "killed-0.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)
        for p in processes:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
    finally:
        watchdog.cancel()
        for log in logs:
            log.close()
    assert not out.exists()
    assert json.loads((checkpoint / "state.json").read_text())["phases"][0]["name"] == "head"

    outputs = run_workers(args + ["--resume"], tmp_path, "resumed")
    assert all("resuming after 1 finished phase" in o for o in outputs)
    assert "head epoch" not in outputs[0]  # the finished phase is not run again
    assert "fine-tune top 1 blocks epoch 1/5:" not in outputs[0]  # nor the finished epoch
    manifest = json.loads((out / "manifest.json").read_text())
    phases = manifest["strategy"]["phases"]
    assert [p["name"] for p in phases] == ["head", "fine-tune top 1 blocks"]
    assert phases[1]["epochs_run"] < 5  # continued from the backed-up epoch
    assert manifest["metrics"]["keras_test_accuracy"] > 0.5
    assert not checkpoint.exists()
