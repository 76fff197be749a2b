"""Several machines on TensorFlow's own engine: MultiWorkerMirroredStrategy driven by TF_CONFIG.

Each worker runs the same `factory build` command with its own TF_CONFIG, e.g.
  {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}
Worker 0 is the chief: it alone converts, writes --out and publishes. Feature extraction is
split between the workers by content hash (each writes its own file of a shared cache
folder); head training and fine-tuning run under the strategy with the global batch = the
per-worker batch x workers. Without TF_CONFIG a build runs in one process, as always.

The strategy must exist before TensorFlow runs any other op, so `cluster()` is called first
thing in a build and remembered for the life of the process.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

from targets.errors import FactoryError


@dataclass(frozen=True)
class Cluster:
    workers: int = 1
    index: int = 0  # this worker's place in the cluster's worker list
    strategy: object | None = None  # MultiWorkerMirroredStrategy when workers > 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def shard(self) -> str | None:
        """This worker's own file in a shared feature cache (None: the machine's, one process)."""
        return None if self.workers == 1 else f"worker-{self.index}"

    def scope(self):
        return self.strategy.scope() if self.strategy else nullcontext()

    def barrier(self, ok: bool = True) -> bool:
        """Return once every worker got here (an all-reduce across the cluster): whether every
        worker said `ok`."""
        if self.strategy is None:
            return ok
        from targets.tf_setup import tf

        strategy = self.strategy
        flag = tf.constant(1.0 if ok else 0.0)
        agreeing = strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.identity(flag))), axis=None)
        return int(agreeing) == self.workers


def parse_tf_config(text: str) -> tuple[int, int]:
    """(workers, index) from a TF_CONFIG value; one clear error for anything else."""
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        kind, index = task["type"], task["index"]
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise FactoryError('TF_CONFIG is not {"cluster": {"worker": [...]}, "task": {"type": "worker", '
                           f'"index": N}} ({type(exc).__name__}: {exc})') from exc
    if set(config["cluster"]) - {"worker"}:
        raise FactoryError(f"TF_CONFIG: only a 'worker' cluster is supported (worker 0 is the chief); "
                           f"got {sorted(config['cluster'])}")
    if kind != "worker":
        raise FactoryError(f"TF_CONFIG: task type {kind!r} is not supported; every task is a 'worker'")
    if not isinstance(workers, list) or not workers or not all(isinstance(w, str) and ":" in w for w in workers):
        raise FactoryError("TF_CONFIG: cluster.worker must be a list of 'host:port' strings")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(workers):
        raise FactoryError(f"TF_CONFIG: task index {index!r} is not in 0..{len(workers) - 1}")
    return len(workers), index


def configured() -> tuple[int, int]:
    """(workers, index) that TF_CONFIG describes, (1, 0) without it; starts nothing."""
    text = os.environ.get("TF_CONFIG", "").strip()
    return parse_tf_config(text) if text else (1, 0)


@lru_cache(maxsize=1)
def cluster() -> Cluster:
    """This process's cluster: one local worker, or its place in TF_CONFIG's cluster."""
    workers, index = configured()
    if workers == 1:
        return Cluster()
    from targets.tf_setup import tf

    return Cluster(workers, index, tf.distribute.MultiWorkerMirroredStrategy())
