"""The one training loop every strategy uses: Adam, early stopping, best weights restored."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from factory.tf_setup import keras


@dataclass
class Phase:
    name: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class ProgressCallback(keras.callbacks.Callback):
    """Feeds a progress reporter batch by batch (see factory.progress)."""

    def __init__(self, reporter, description: str, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.reporter, self.description = reporter, description
        self.epochs, self.steps = epochs, steps_per_epoch
        self.task = None

    def on_train_begin(self, logs=None):
        self.task = self.reporter.start(self.description, total=self.epochs * self.steps)

    def on_train_batch_end(self, batch, logs=None):
        self.reporter.advance(self.task)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.reporter.update(
            self.task,
            f"{self.description} epoch {epoch + 1}/{self.epochs} "
            f"loss {logs.get('loss', 0):.3f} val_acc {logs.get('val_accuracy', 0):.3f}",
            completed=(epoch + 1) * self.steps,
        )

    def on_train_end(self, logs=None):
        self.reporter.finish(self.task)


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
    *,
    name: str,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    patience: int,
    reporter,
    class_weight: dict | None = None,
) -> Phase:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    steps = int(np.ceil(len(x) / batch_size))
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    start = time.perf_counter()
    history = model.fit(
        x, y,
        validation_data=validation,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        class_weight=class_weight,
        verbose=0,
        callbacks=[stopper, ProgressCallback(reporter, name, epochs, steps)],
    )
    val_loss = history.history["val_loss"]
    best = int(np.argmin(val_loss))
    return Phase(
        name=name,
        epochs_run=len(val_loss),
        best_epoch=best + 1,
        best_val_loss=float(val_loss[best]),
        best_val_accuracy=float(history.history["val_accuracy"][best]),
        seconds=round(time.perf_counter() - start, 2),
    )
