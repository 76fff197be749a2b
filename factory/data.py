"""Datasets: discover, validate, subsample, decode, resize and split.

A source is a folder with one sub-folder per class, or a named source shipped by a package
(`fashion-mnist` from Debian's dataset-fashion-mnist, `digits` from scikit-learn). Images end
up as uint8 RGB arrays at the backbone's input size; normalization happens inside the model.

Unreadable images are skipped and reported (`strict=True` fails on the first one instead);
an empty folder, a class without images or a single class is an error.

A Dataset is what the prepare stage hands on: `class_names`, `sizes()` and three splits, each
with `labels`, `len()`, `batches(n)` and, today, the decoded `images` array. Evaluation reads
`batches`; the training loops, the feature cache, calibration, QAT, the advisor, the gradient
report and the parity check still read `images`, which a streaming source will replace.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from targets.errors import FactoryError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]


@dataclass
class Split:
    images: np.ndarray  # uint8 [n, size, size, 3]
    labels: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        """(images, labels) batches in order."""
        for start in range(0, len(self), batch_size):
            yield self.images[start:start + batch_size], self.labels[start:start + batch_size]


@dataclass
class Dataset:
    source: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unreadable images

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.val), "test": len(self.test)}


def load(spec, input_size: int) -> Dataset:
    """Load a DataSpec's source at `input_size`, keep a stratified `limit` of it, and split it
    train/validation/test."""
    source, seed = spec.source, spec.seed
    if source in NAMED_SOURCES:
        items, labels, class_names = NAMED_SOURCES[source]()
    else:
        items, labels, class_names = _folder_source(Path(source))
    keep = _stratified_subset(labels, spec.limit, seed)
    images, kept_labels, skipped = [], [], []
    for index in keep:
        try:
            images.append(_to_rgb_array(items[index], input_size))
            kept_labels.append(labels[index])
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            if spec.strict:
                raise FactoryError(f"unreadable image {items[index]} ({exc}); remove or replace it") from exc
            skipped.append(f"{items[index]}: {exc}")
    if not images:
        raise FactoryError(f"--data {source}: no readable images")
    images_arr = np.stack(images)
    labels_arr = np.asarray(kept_labels, dtype=np.int64)
    _check_class_counts(labels_arr, class_names, source)
    train, val, test = _stratified_split(labels_arr, spec.val_fraction, spec.test_fraction, seed)
    return Dataset(
        source=source,
        class_names=class_names,
        train=Split(images_arr[train], labels_arr[train]),
        val=Split(images_arr[val], labels_arr[val]),
        test=Split(images_arr[test], labels_arr[test]),
        skipped=skipped,
    )


def _folder_source(root: Path):
    if not root.is_dir():
        raise FactoryError(
            f"--data {root}: no such folder and not a named source ({', '.join(NAMED_SOURCES)})"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FactoryError(f"--data {root}: no class sub-folders; put images in {root}/<class name>/")
    if len(class_dirs) < 2:
        raise FactoryError(
            f"--data {root}: only one class ({class_dirs[0].name}); a classifier needs at least two class folders"
        )
    items, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise FactoryError(
                f"class folder {class_dir} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add some or remove it"
            )
        items += files
        labels += [label] * len(files)
    return items, np.asarray(labels), [d.name for d in class_dirs]


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    return list(images), digits.target.astype(np.int64), [str(d) for d in range(10)]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist():
    files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [f for f in files if not (FASHION_MNIST_DIR / f).is_file()]
    if missing:
        raise FactoryError(
            f"fashion-mnist is not installed ({FASHION_MNIST_DIR} lacks {missing[0]}): "
            "apt-get install dataset-fashion-mnist"
        )
    train_x, train_y, test_x, test_y = (_read_idx(FASHION_MNIST_DIR / f) for f in files)
    images = np.concatenate([train_x, test_x])
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    return list(images), labels, list(FASHION_MNIST_CLASSES)


# Named sources: name -> loader returning (items, labels, class names); an item is a path or an array.
NAMED_SOURCES = {
    "fashion-mnist": _fashion_mnist,
    "digits": _digits,
}


def _to_rgb_array(item, size: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        image = Image.fromarray(item)
    else:
        with Image.open(item) as opened:
            opened.load()  # decode now so a truncated file fails here, not later
            image = opened.copy()
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _stratified_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most `limit` items with the class proportions of `labels`."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Interleave classes so any prefix is (nearly) stratified, then take the first `limit`.
    rank_in_class = np.empty(len(labels))
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank_in_class[members] = np.arange(len(members)) / len(members)
    return np.sort(order[np.argsort(rank_in_class[order], kind="stable")][:limit])


def _check_class_counts(labels: np.ndarray, class_names: list[str], source: str) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    for name, count in zip(class_names, counts):
        if count < 3:
            raise FactoryError(
                f"--data {source}: class {name!r} has {count} usable image(s); at least 3 are needed "
                "(one each for train, validation and test)"
            )


def _stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed + 1)
    train, val, test = [], [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, round(len(members) * test_fraction))
        n_val = max(1, round(len(members) * val_fraction))
        test += list(members[:n_test])
        val += list(members[n_test:n_test + n_val])
        train += list(members[n_test + n_val:])
    return (np.sort(np.asarray(s, dtype=np.int64)) for s in (train, val, test))
