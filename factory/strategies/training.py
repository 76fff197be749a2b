"""The one training loop every strategy uses: Adam, early stopping with the best weights
restored, class weights, a per-epoch backup for --resume, and (under TF_CONFIG) the
multi-worker strategy; the caller hands it tf.data pipelines (augmentation included)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory import distributed
from targets.tf_setup import keras, tf


STEPS_PER_EXECUTION = 16  # steps per compiled call: a small head's step is mostly call overhead


@dataclass
class Phase:
    name: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float | None  # None: trained without a validation pass (an advisor trial step)
    best_val_accuracy: float | None
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class ProgressCallback(keras.callbacks.Callback):
    """Feeds a progress reporter batch by batch, counting examples (see factory.progress)."""

    def __init__(self, reporter, description: str, epochs: int, examples: int, global_batch: int,
                 unit: str = "images"):
        super().__init__()
        self.reporter, self.description, self.unit = reporter, description, unit
        self.epochs, self.examples, self.global_batch = epochs, examples, global_batch
        self.task = None

    def on_train_begin(self, logs=None):
        self.task = self.reporter.start(self.description, total=self.epochs * self.examples, unit=self.unit)
        self.done = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):  # once per execution of steps_per_execution steps
        done = self.epoch * self.examples + min((batch + 1) * self.global_batch, self.examples)
        self.reporter.advance(self.task, done - self.done)
        self.done = done

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        validation = f" val_acc {logs['val_accuracy']:.3f}" if "val_accuracy" in logs else ""
        self.reporter.update(
            self.task,
            f"{self.description} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', 0):.3f}{validation}",
            completed=(epoch + 1) * self.examples,
        )
        self.done = (epoch + 1) * self.examples

    def on_train_end(self, logs=None):
        self.reporter.finish(self.task)


def augmenter(seed: int) -> keras.Sequential:
    """Flip, small crop (zoom and shift) and small rotation: label-preserving for most photos."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomZoom(0.1, seed=seed),
        keras.layers.RandomTranslation(0.05, 0.05, seed=seed),
        keras.layers.RandomRotation(0.04, seed=seed),  # about +-15 degrees
    ], name="augment")


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float] | None:
    """n / (k * count) per class when the largest class is over 1.5x the smallest, else None."""
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() == 0 or counts.max() <= 1.5 * counts.min():
        return None
    return {c: float(len(labels) / (num_classes * counts[c])) for c in range(num_classes)}


def distributable(data, cluster):
    """Each worker reads its share of the batches (the DATA policy; the default warns on such pipelines)."""
    if cluster.strategy is None:
        return data
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def fit(
    model: keras.Model,
    train,
    validation,
    *,
    steps_per_epoch: int | None = None,
    examples: int,
    name: str,
    epochs: int,
    learning_rate: float,
    global_batch: int,
    patience: int,
    reporter,
    class_weight: dict | None = None,
    backup_dir: Path | None = None,
    compiled: bool = False,
    steps_per_execution: int = STEPS_PER_EXECUTION,
    callbacks: tuple = (),
    decay_steps: int | None = None,
    unit: str = "images",
) -> Phase:
    """Train on `train` (a shuffled tf.data pipeline of `examples` examples per epoch in batches
    of `global_batch`) with early stopping on `validation`; under a multi-worker strategy every
    worker runs every step on its share of each batch (each reads the whole pipeline and keeps
    its share: the DATA policy).

    An epoch is `steps_per_epoch` batches when given (`train` must then repeat). `compiled`:
    continue with the model's optimizer as it is (its state and its schedule kept, nothing traced
    again). `decay_steps`: the learning rate falls along a cosine from `learning_rate` to 0 over
    that many steps (fine-tuning settles instead of jittering between epochs); None: constant.
    Without `validation` there is no early stopping: every epoch runs."""
    cluster = distributed.cluster()
    if not compiled:
        with cluster.scope():
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate if decay_steps is None else
                                                keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
                steps_per_execution=steps_per_execution,
            )
    callbacks = [ProgressCallback(reporter, name, epochs, examples, global_batch, unit), *callbacks]
    if validation is not None:
        callbacks.insert(0, keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                          restore_best_weights=True))
        validation = distributable(validation, cluster)
    if backup_dir is not None:  # model + optimizer + epoch after every epoch; removed on success
        callbacks.insert(0, keras.callbacks.BackupAndRestore(str(backup_dir)))
    start = time.perf_counter()
    history = model.fit(
        distributable(train, cluster), validation_data=validation, epochs=epochs, steps_per_epoch=steps_per_epoch,
        class_weight=class_weight, verbose=0, callbacks=callbacks,
    )
    seconds = round(time.perf_counter() - start, 2)
    if validation is None:
        epochs_run = len(history.history["loss"])
        return Phase(name, epochs_run, epochs_run, None, None, seconds)
    val_loss = history.history["val_loss"]
    best = int(np.argmin(val_loss))
    return Phase(
        name=name,
        epochs_run=len(val_loss),
        best_epoch=best + 1,
        best_val_loss=float(val_loss[best]),
        best_val_accuracy=float(history.history["val_accuracy"][best]),
        seconds=seconds,
    )
