"""Runs a strategy's phases and checkpoints them, so an interrupted build can --resume.

After every completed phase the model's weights and the list of finished phases are saved;
inside a phase, keras' BackupAndRestore saves model + optimizer + epoch after every epoch. On
--resume, finished phases are skipped (their weights restored) and the interrupted phase
continues from its last completed epoch. The folder is removed when the build succeeds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from factory import staging
from factory.strategies.training import Phase
from targets.errors import FactoryError

STATE = "state.json"
WEIGHTS = "weights.npz"  # the model's weights after the last finished phase


class TrainingSession:
    def __init__(self, model, folder: Path | None = None, fingerprint: str = "", resume: bool = False,
                 writer: bool = True):
        """`fingerprint`: what must match to resume (see factory.specs.weights_fingerprint).
        `writer`: this process saves the checkpoint (only the chief of a multi-worker build does;
        the others read it on --resume)."""
        self.model, self.folder, self.fingerprint, self.writer = model, folder, fingerprint, writer
        self.done: list[Phase] = []
        self.snapshots: list[list] = []  # weights after each phase, for reverting a stage
        self.phases_run = 0  # calls of run(), finished or resumed: a reverted phase still counts
        self.resumed = False
        if folder is None:
            return
        state_path = folder / STATE
        if resume and state_path.is_file():
            try:
                state = json.loads(state_path.read_text())
                phases = [Phase(**p) for p in state["phases"]]
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise FactoryError(f"--resume: the checkpoint in {folder} is damaged ({type(exc).__name__}); "
                                   "run again without --resume to start over") from exc
            if state.get("recipe") != fingerprint:
                raise FactoryError(
                    f"--resume: the checkpoint in {folder} was made by a different recipe; "
                    "run again with the same options, or without --resume to start over"
                )
            self.done = phases
            if self.done:
                self.model.set_weights(_load_weights(folder / WEIGHTS))
            if writer:
                staging.record_owner(folder)  # this process owns the checkpoint now (see `factory store gc`)
            self.resumed = True
        elif not resume and folder.exists() and writer:
            shutil.rmtree(folder)

    def run(self, name: str, train: Callable[[Path | None], Phase]) -> Phase:
        """Run phase `name` (train(backup_dir) -> Phase) unless a resumed checkpoint finished it."""
        index = self.phases_run
        self.phases_run += 1
        finished = index < len(self.done)
        if finished:
            if self.done[index].name != name:
                raise FactoryError(f"--resume: expected phase {self.done[index].name!r}, the recipe now runs {name!r}")
            phase = self.done[index]
        else:
            backup = self.folder / f"phase{index}" if self.folder else None
            phase = train(backup)
            self.done.append(phase)
        self.snapshots.append(self.model.get_weights())  # every worker reads: a collective op
        if not finished:
            self._save(self.snapshots[-1])
        return phase

    def revert_last(self) -> None:
        """Drop the last phase's result: weights go back to the phase before it (saved, so a
        --resume goes on from them)."""
        self.snapshots.pop()
        self.model.set_weights(self.snapshots[-1])
        self._save(self.snapshots[-1])

    def _save(self, weights: list) -> None:
        if self.folder is None or not self.writer:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        staging.record_owner(self.folder)  # `factory store gc --builds` leaves it alone while this process lives
        with open(self.folder / (WEIGHTS + ".tmp"), "wb") as f:
            np.savez(f, *weights)
        (self.folder / (WEIGHTS + ".tmp")).replace(self.folder / WEIGHTS)
        state = {"recipe": self.fingerprint, "phases": [p.as_dict() for p in self.done]}
        tmp = self.folder / (STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.folder / STATE)


def _load_weights(path: Path) -> list:
    with np.load(path, allow_pickle=False) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]
