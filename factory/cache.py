"""On-disk cache of frozen-backbone features, one entry per image, so the backbone runs once
per image, ever: a build over a folder with 100 new images extracts only those 100, and a
build killed mid-extraction resumes from what it had committed (every couple of seconds).

An entry is keyed on (extractor, image): the extractor fingerprint covers everything that
decides a feature vector (the backbone's weights, hashed, its normalization, the input size
and the decoder), the image key is its content hash (factory.data). Entries live in SQLite
files in the cache folder: one per machine for one-process builds (processes on one machine
share it under SQLite's lock) and one per worker of a multi-worker build, so no two machines
write one file; readers read them all. Extracted features are committed every COMMIT_EVERY_S
seconds (one fsync'd transaction each). The folder comes from factory.specs.CacheSpec.

For training, a split's features are copied from the cache into a flat float32 file (rows in
a seeded random order) that the head reads back as a tf.data stream: memory stays flat.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory.data import DECODE_VERSION, Split
from targets.errors import FactoryError

CACHE_VERSION = "2"
SHARD_SUFFIX = ".sqlite"
LOCAL_SHARD = "local-" + re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64]  # one file per machine
SCRATCH_PREFIX = "scratch-"  # a build's flat feature files, removed when its training ends
EXTRACT_BATCH = 64
COMMIT_EVERY_S = 2.0  # extracted features are committed at least this often (a kill loses less)
KEYS_PER_QUERY = 500  # SQLite's default limit on bound parameters is 999
SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    extractor TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL, used REAL NOT NULL,
    PRIMARY KEY (extractor, key));
CREATE TABLE IF NOT EXISTS extractors (
    extractor TEXT PRIMARY KEY, backbone TEXT NOT NULL, input_size INTEGER NOT NULL, dim INTEGER NOT NULL);
"""


def extractor_fingerprint(classifier, input_size: int) -> str:
    digest = hashlib.sha256(CACHE_VERSION.encode())
    digest.update(repr((classifier.backbone.name, classifier.backbone.preprocessing, input_size,
                        DECODE_VERSION)).encode())
    for weight in classifier.feature_model.weights:
        digest.update(weight.name.encode())
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


@contextmanager
def opened(path: Path):
    """A connection to one cache file; any SQLite failure is one FactoryError naming the file."""
    connection = None
    try:
        connection = sqlite3.connect(path, timeout=60, isolation_level=None)
        connection.execute("PRAGMA trusted_schema=OFF")
        connection.execute("PRAGMA synchronous=NORMAL")  # rollback journal: works on a shared (network) folder
        connection.executescript(SCHEMA)
        yield connection
    except sqlite3.Error as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            why = f"is locked by another process ({text})"
        elif "unable to open" in text or "readonly" in text or "read-only" in text or "disk" in text:
            why = f"cannot be opened or written ({text}): check the folder's permissions and free space"
        else:
            why = f"is damaged ({text}); delete it or run `factory cache prune --all`"
        raise FactoryError(f"feature cache file {path} {why}") from exc
    finally:
        if connection is not None:
            connection.close()


def shard_files(folder: Path) -> list[Path]:
    """The cache's SQLite files (plain files only: a link is not followed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*" + SHARD_SUFFIX) if p.is_file() and not p.is_symlink())


def _chunks(keys: list[str]):
    for start in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[start:start + KEYS_PER_QUERY]
        yield chunk, ",".join("?" * len(chunk))


class FeatureStore:
    """The cached features of one extractor, in `folder`; writes go to the `shard` file.
    `feature_fn` (uint8 images -> features) computes what the cache lacks."""

    def __init__(self, folder: Path, extractor: str, *, backbone: str, input_size: int, dim: int,
                 feature_fn=None, shard: str = LOCAL_SHARD, touch_all: bool = True):
        """`touch_all`: mark entries used in every file that holds them, not only in `shard`'s
        (the workers of a cluster write only their own file)."""
        self.folder, self.extractor, self.feature_fn, self.touch_all = Path(folder), extractor, feature_fn, touch_all
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FactoryError(f"feature cache folder {self.folder} cannot be made ({exc.strerror or exc}); "
                               "choose another --cache-dir") from exc
        self.own = self.folder / (shard + SHARD_SUFFIX)
        self.dim = dim
        self.requested: set[str] = set()  # keys of every image asked for
        self.lacked: set[str] = set()  # of those, the ones the cache did not hold when asked
        self.extracted = 0  # images this process ran the backbone on
        self.extract_seconds = 0.0
        self._staged: list[tuple] = []  # rows waiting for `commit`
        with opened(self.own) as db:
            db.execute("INSERT OR IGNORE INTO extractors VALUES (?, ?, ?, ?)", (extractor, backbone, input_size, dim))

    def cached(self, keys: list[str]) -> set[str]:
        """Those of `keys` this extractor has features for, in any shard."""
        found: set[str] = set()
        wanted = list(dict.fromkeys(keys))
        for path in shard_files(self.folder):
            with opened(path) as db:
                for chunk, marks in _chunks([k for k in wanted if k not in found]):
                    found.update(k for (k,) in db.execute(
                        f"SELECT key FROM features WHERE extractor = ? AND key IN ({marks})", (self.extractor, *chunk)))
        return found

    def stage(self, keys: list[str], vectors: np.ndarray) -> None:
        """Queue features for the next `commit`."""
        now = time.time()
        self._staged += [(self.extractor, k, np.asarray(v, np.float32).tobytes(), now) for k, v in zip(keys, vectors)]

    def commit(self) -> None:
        """Write the staged features in one transaction: a kill loses only what is staged."""
        if not self._staged:
            return
        with opened(self.own) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)", self._staged)
            db.execute("COMMIT")
        self._staged = []

    def vectors(self, keys: list[str]) -> np.ndarray:
        """float32 [len(keys), dim], in the order of `keys`; every key must be cached. The entries
        read are marked as used now (for `factory cache prune`) in the file that holds them."""
        found: dict[str, bytes] = {}
        wanted = list(dict.fromkeys(keys))
        now = time.time()
        for path in shard_files(self.folder):
            with opened(path) as db:
                here = {}
                for chunk, marks in _chunks([k for k in wanted if k not in found]):
                    here.update(db.execute(f"SELECT key, vector FROM features WHERE extractor = ? AND key IN ({marks})",
                                           (self.extractor, *chunk)))
                if here and (self.touch_all or path == self.own):
                    db.execute("BEGIN IMMEDIATE")
                    for chunk, marks in _chunks(list(here)):
                        db.execute(f"UPDATE features SET used = ? WHERE extractor = ? AND key IN ({marks})",
                                   (now, self.extractor, *chunk))
                    db.execute("COMMIT")
                found.update(here)
        absent = [k for k in wanted if k not in found]
        if absent:
            raise FactoryError(f"feature cache in {self.folder} lacks {len(absent)} image(s) it should hold; "
                               "was it pruned during the build? run the build again")
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([np.frombuffer(found[k], np.float32) for k in keys])


def summary(store: FeatureStore) -> dict:
    """What the cache saved this build: images asked for, found cached, extracted by this
    process (and how long; in a cluster the other workers extracted the rest)."""
    return {"images": len(store.requested), "cached": len(store.requested - store.lacked),
            "extracted": store.extracted, "extract_seconds": round(store.extract_seconds, 2)}


@contextmanager
def open_store(classifier, folder: Path | None, shard: str | None = None):
    """`classifier`'s feature store in `folder`; with None (no cache), a private one that is
    deleted afterwards. Under a multi-worker strategy pass a classifier built outside it: its
    BatchNorm statistics would otherwise be all-reduced on every read."""
    with ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefactory-features-")))
        size = classifier.backbone.input_size
        yield FeatureStore(folder, extractor_fingerprint(classifier, size), backbone=classifier.backbone.name,
                           input_size=size, dim=int(classifier.feature_model.output_shape[-1]),
                           feature_fn=classifier.feature_fn(), shard=shard or LOCAL_SHARD, touch_all=shard is None)


def extract(split: Split, store: FeatureStore, reporter, *, description: str, worker: int = 0,
            workers: int = 1) -> int:
    """Run the backbone on the examples of `split` the cache lacks (this worker's share of them,
    by content hash) and store their features batch by batch; returns how many it extracted."""
    known = store.cached(split.keys)
    missing = [p for p, key in enumerate(split.keys) if key not in known]
    store.requested.update(split.keys)
    first = {}  # one position per distinct key: duplicates are extracted once
    for p in missing:
        first.setdefault(split.keys[p], p)
    store.lacked.update(first)
    mine = [p for key, p in first.items() if int(key[:8], 16) % workers == worker]
    if not mine:
        return 0
    task = reporter.start(description, total=len(mine), unit=split.unit)
    todo = split.subset(mine)
    start = last_commit = time.perf_counter()
    done = 0
    try:
        for images, _ in todo.batches(EXTRACT_BATCH):
            store.stage(todo.keys[done:done + len(images)], store.feature_fn(images))
            done += len(images)
            if time.perf_counter() - last_commit >= COMMIT_EVERY_S:
                store.commit()
                last_commit = time.perf_counter()
            reporter.advance(task, len(images))
    finally:  # what was extracted before an error or an interrupt is kept too
        store.commit()
    store.extracted += done
    store.extract_seconds += time.perf_counter() - start
    reporter.finish(task)
    return len(mine)


@dataclass
class FeatureSplit:
    """A split's features in a flat float32 file (rows in `labels` order) and its labels."""

    path: Path
    labels: np.ndarray
    dim: int

    def __len__(self) -> int:
        return len(self.labels)

    def array(self) -> np.ndarray:
        """All rows in memory: for small consumers (the advisor's probe), not for training."""
        return np.fromfile(self.path, np.float32).reshape(len(self), self.dim)

    def dataset(self, batch_size: int, *, shuffle_seed: int | None = None, shuffle_buffer: int = 8192):
        """(features, labels) batches streamed from the file; shuffled through a buffer each epoch
        (the rows are already in a random order)."""
        from targets.tf_setup import tf

        rows = tf.data.FixedLengthRecordDataset(str(self.path), self.dim * 4)
        data = tf.data.Dataset.zip((rows, tf.data.Dataset.from_tensor_slices(self.labels)))
        data = data.apply(tf.data.experimental.assert_cardinality(len(self)))
        if shuffle_seed is not None:
            data = data.shuffle(min(len(self), shuffle_buffer), seed=shuffle_seed, reshuffle_each_iteration=True)
        decode = lambda raw, labels: (tf.io.decode_raw(raw, tf.float32), labels)  # noqa: E731  (a batch at once)
        return data.batch(batch_size).map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def write_split(split: Split, store: FeatureStore, path: Path, seed: int, chunk: int = 2048) -> FeatureSplit:
    """Copy `split`'s features from the cache to `path`, rows in a seeded random order."""
    order = np.random.default_rng(seed).permutation(len(split))
    with open(path, "wb") as f:
        for start in range(0, len(order), chunk):
            store.vectors([split.keys[p] for p in order[start:start + chunk]]).tofile(f)
    return FeatureSplit(Path(path), split.labels[order], store.dim)


# --- listing and pruning (`factory cache info|prune`) -------------------------------------------

def info(folder: Path) -> dict:
    """What the cache in `folder` holds: one row per extractor, and the bytes on disk."""
    rows: dict[str, dict] = {}
    for path in shard_files(folder):
        with opened(path) as db:
            names = {e: (b, s, d) for e, b, s, d in db.execute("SELECT extractor, backbone, input_size, dim FROM extractors")}
            for extractor, count, size, used in db.execute(
                    "SELECT extractor, COUNT(*), SUM(LENGTH(vector)), MAX(used) FROM features GROUP BY extractor"):
                backbone, input_size, dim = names.get(extractor, ("?", 0, 0))
                row = rows.setdefault(extractor, {"extractor": extractor[:12], "backbone": backbone,
                                                  "input_size": input_size, "dim": dim, "images": 0,
                                                  "feature_bytes": 0, "last_used": 0.0})
                row["images"] += count
                row["feature_bytes"] += size or 0
                row["last_used"] = max(row["last_used"], used or 0.0)
    files = shard_files(folder)
    scratch = _scratch_folders(folder)
    return {
        "folder": str(folder),
        "extractors": sorted(rows.values(), key=lambda r: -r["last_used"]),
        "files": len(files),
        "bytes_on_disk": sum(p.stat().st_size for p in files) + sum(_tree_bytes(p) for p in scratch),
        "scratch_folders": len(scratch),
    }


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prune(folder: Path, *, unused_days: float | None = None, max_bytes: int | None = None,
          everything: bool = False, now: float | None = None) -> dict:
    """Delete features not used for `unused_days`, then the least recently used ones until the
    features fit in `max_bytes`; or everything. Scratch folders of builds that are gone go too.
    Returns what was removed."""
    now = time.time() if now is None else now
    before = info(folder)
    files = shard_files(folder)
    if everything:
        for path in files:
            for companion in (path, Path(str(path) + "-journal")):
                companion.unlink(missing_ok=True)
    else:
        cutoff = -np.inf if unused_days is None else now - unused_days * 86400
        shard, rowid, used, size = _usage(files)
        drop = used <= cutoff
        if max_bytes is not None:
            order = np.lexsort((-rowid, -used))  # most recently used first: kept while they fit
            order = order[~drop[order]]
            drop[order[np.cumsum(size[order]) > max_bytes]] = True
        for index, path in enumerate(files):
            doomed = [int(r) for r in rowid[drop & (shard == index)]]
            if not doomed:
                continue
            with opened(path) as db:
                for start in range(0, len(doomed), KEYS_PER_QUERY):
                    chunk = doomed[start:start + KEYS_PER_QUERY]
                    db.execute(f"DELETE FROM features WHERE rowid IN ({','.join('?' * len(chunk))})", chunk)
                db.execute("VACUUM")
    for path in _scratch_folders(folder):
        if everything or not _scratch_in_use(path):
            shutil.rmtree(path, ignore_errors=True)
    after = info(folder)
    count = lambda report: sum(r["images"] for r in report["extractors"])  # noqa: E731
    return {"removed_images": count(before) - count(after),
            "freed_bytes": before["bytes_on_disk"] - after["bytes_on_disk"],
            "images": count(after), "bytes_on_disk": after["bytes_on_disk"]}


def _usage(files: list[Path]) -> tuple[np.ndarray, ...]:
    """Per cached entry: its file's index in `files`, rowid, last use and size."""
    columns = [], [], [], []
    for index, path in enumerate(files):
        with opened(path) as db:
            for rowid, used, size in db.execute("SELECT rowid, used, LENGTH(vector) FROM features"):
                for column, value in zip(columns, (index, rowid, used, size)):
                    column.append(value)
    return tuple(np.asarray(c, dtype) for c, dtype in zip(columns, (np.int64, np.int64, np.float64, np.int64)))


def scratch_folder(folder: Path) -> tempfile.TemporaryDirectory:
    """A build's scratch folder in the cache folder, named after its process (for `prune`)."""
    return tempfile.TemporaryDirectory(dir=folder, prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")


def _scratch_folders(folder: Path) -> list[Path]:
    folder = Path(folder)
    return [p for p in folder.glob(SCRATCH_PREFIX + "*") if p.is_dir() and not p.is_symlink()] if folder.is_dir() \
        else []


def _scratch_in_use(path: Path) -> bool:
    from factory import staging

    try:
        pid = int(path.name[len(SCRATCH_PREFIX):].split("-")[0])
    except ValueError:
        return False
    return staging.owns(pid, path)
