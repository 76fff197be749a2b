"""Datasets: discover, validate, subsample and split a list of examples; decode them on demand.

A source is a folder with one sub-folder per class, a labels file (a CSV of image paths and
labels, as labelling tools export them), or a named source shipped by a package
(`fashion-mnist` from Debian's dataset-fashion-mnist, `digits` from scikit-learn). The data
stage lists examples (a file path, or a small array a named source keeps), checks each one
can be decoded, hashes its content, and splits the list; pixels are decoded, resized to the
backbone's input size (uint8 RGB; normalization happens inside the model) and batched only
when a consumer reads a split, so memory does not grow with the dataset.

Unreadable images are skipped and reported (`strict=True` fails on the first one instead);
an empty folder, a class without images or a single class is an error.

Text sources (factory.text_data: .txt folders, CSV, JSON Lines, debian-packages and
debian-summaries) go through the same subset and split; their splits hold the texts and
decode each one to the encoder's token ids (int32 [length]) as it is read.

A Split offers:
  dataset(batch_size, shuffle_seed=, augment=)  a tf.data pipeline (parallel decode, prefetch)
  batches(batch_size)                           the same, in order, as numpy (images, labels)
  keys                                          content hashes, one per example (the cache key)
  load_images(positions) / sample(n, seed)      a decoded array of a few examples
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from factory import text_data as text_data_lib
from factory.backbones import TEXT_BACKBONES, modality
from factory.progress import Silent
from targets.errors import FactoryError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)
DECODE_VERSION = "pil-rgb-bilinear-1"  # changes when decoding would give different pixels
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
CHECK_THREADS = 4


def decode(item, size: int, key: str | None = None) -> np.ndarray:
    """One example (a path or an array) as uint8 RGB [size, size, 3]. With `key`, a file must
    still hash to it: features cached under a key must come from the pixels it names."""
    if isinstance(item, np.ndarray):
        return _rgb(Image.fromarray(item), size)
    raw = _read_file(item)
    if key is not None and hashlib.sha256(raw).hexdigest() != key:
        raise FactoryError(f"image {item} changed during the build; run it again")
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        return _rgb(image, size)


def _read_file(path) -> bytes:
    """A regular file's bytes: a listed path may name a folder, a device or a pipe."""
    path = Path(path)
    if not path.is_file():
        raise OSError("missing or not a regular file" if not path.exists() else "not a regular file")
    return path.read_bytes()


def _rgb(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def content_key(item, size: int) -> str:
    """sha256 of what decides the example's pixels (the file's bytes, or the array), for a file
    only once it decoded completely (read once; a JPEG decoded at a reduced scale, which still
    reads every byte); raises one of DECODE_ERRORS otherwise."""
    if isinstance(item, np.ndarray):
        digest = hashlib.sha256(repr((item.shape, item.dtype.str)).encode())
        digest.update(np.ascontiguousarray(item).tobytes())
        return digest.hexdigest()
    raw = _read_file(item)
    with Image.open(io.BytesIO(raw)) as image:
        image.draft("RGB", (size, size))
        image.load()
    return hashlib.sha256(raw).hexdigest()


@dataclass
class Split:
    """Some examples of a source: what they are (`items`), their labels and content keys."""

    items: list  # paths or arrays (images) or strings (texts), decoded on demand
    labels: np.ndarray  # int64 [n]
    keys: list[str]  # content hash per example
    input_size: int  # pixels of a square image, or tokens of a text
    tokenizer: object = None  # texts: the encoder's tokenizer (factory.tokenizer.WordPiece), decoding to token ids

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def kind(self) -> str:
        return "image" if self.tokenizer is None else "text"

    @property
    def unit(self) -> str:
        """What its examples are called in progress lines."""
        return "images" if self.tokenizer is None else "texts"

    @property
    def example_shape(self) -> tuple:
        return (self.input_size, self.input_size, 3) if self.tokenizer is None else (self.input_size,)

    @property
    def example_dtype(self):
        return np.uint8 if self.tokenizer is None else np.int32

    def decode(self, position: int) -> np.ndarray:
        if self.tokenizer is not None:
            return self.tokenizer.encode([self.items[position]])[0]
        try:
            return decode(self.items[position], self.input_size, self.keys[position])
        except DECODE_ERRORS as exc:  # it decoded when listed: the file changed since
            raise FactoryError(f"unreadable image {self.items[position]} ({exc}); it changed during the build") from exc

    def load_images(self, positions=None) -> np.ndarray:
        """Decoded examples at `positions` (all when None): for a few examples, not a whole split."""
        positions = range(len(self)) if positions is None else positions
        images = np.empty((len(positions), *self.example_shape), self.example_dtype)
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            for i, image in enumerate(pool.map(self.decode, positions)):
                images[i] = image
        return images

    def sample(self, count: int, seed: int) -> np.ndarray:
        """`count` decoded examples drawn at random (all when there are fewer)."""
        if len(self) <= count:
            return self.load_images()
        return self.load_images(np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False)))

    def subset(self, positions) -> "Split":
        positions = np.asarray(positions, dtype=np.int64)
        return Split([self.items[p] for p in positions], self.labels[positions],
                     [self.keys[p] for p in positions], self.input_size, self.tokenizer)

    def dataset(self, batch_size: int, *, shuffle_seed: int | None = None, augment=None):
        """A tf.data pipeline of (examples, labels) batches, decoded in parallel as they are read.

        With `shuffle_seed` the order changes every epoch; `augment` (a Keras layer) is applied
        to each batch in the pipeline.
        """
        from targets.tf_setup import tf

        shape, dtype = self.example_shape, tf.as_dtype(self.example_dtype)
        positions = tf.data.Dataset.from_tensor_slices((np.arange(len(self)), self.labels))
        if shuffle_seed is not None:
            positions = positions.shuffle(len(self), seed=shuffle_seed, reshuffle_each_iteration=True)

        def load(position, label):
            example = tf.numpy_function(lambda p: self.decode(int(p)), [position], dtype, stateful=False)
            example.set_shape(shape)
            return example, label

        data = positions.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
        if augment is not None:
            data = data.map(lambda images, labels: (augment(tf.cast(images, tf.float32), training=True), labels))
        return data.prefetch(tf.data.AUTOTUNE)

    def batches(self, batch_size: int):
        """(examples, labels) numpy batches in order."""
        return self.dataset(batch_size).as_numpy_iterator()


@dataclass
class Dataset:
    source: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unreadable images

    @property
    def input_size(self) -> int:
        return self.train.input_size

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.val), "test": len(self.test)}


def load(spec, input_size: int, reporter=None, tokenizer=None) -> Dataset:
    """List a DataSpec's source, keep a stratified `limit` of it, check and hash each example,
    and split the list train/validation/test (nothing is decoded and kept). A text source
    (factory.text_data) needs the encoder's `tokenizer`, and an image source none."""
    source, seed = spec.source, spec.seed
    check_kind(spec, text_model=tokenizer is not None)
    if tokenizer is not None:
        return _load_texts(spec, tokenizer)
    skipped = []
    if source in NAMED_SOURCES:
        items, labels, class_names = NAMED_SOURCES[source]()
    elif _is_labels_file(Path(source)):
        items, labels, class_names, skipped = _labels_file_source(Path(source), spec.strict)
    else:
        items, labels, class_names = _folder_source(Path(source))
    keep = stratified_subset(labels, spec.limit, seed)
    kept_items, kept_labels, keys = [], [], []
    reporter = reporter or Silent()
    task = reporter.start("checking images", total=len(keep), unit="images")
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        checks = pool.map(lambda i: _try(content_key, items[i], input_size), keep)
        for index, (key, error) in zip(keep, checks):
            reporter.advance(task)
            if error is not None:
                if spec.strict:
                    pool.shutdown(wait=False, cancel_futures=True)  # the first bad image ends it
                    raise FactoryError(f"unreadable image {items[index]} ({error}); remove or replace it") from error
                skipped.append(f"{items[index]}: {error}")
                continue
            kept_items.append(items[index])
            kept_labels.append(labels[index])
            keys.append(key)
    reporter.finish(task)
    if not kept_items:
        raise FactoryError(f"--data {source}: no readable images")
    labels_arr = np.asarray(kept_labels, dtype=np.int64)
    _check_class_counts(labels_arr, class_names, source)
    everything = Split(kept_items, labels_arr, keys, input_size)
    train, val, test = _stratified_split(labels_arr, spec.val_fraction, spec.test_fraction, seed)
    return Dataset(source=source, class_names=class_names, train=everything.subset(train),
                   val=everything.subset(val), test=everything.subset(test), skipped=skipped)


def check_kind(spec, text_model: bool) -> None:
    """Refuse text data for an image backbone and the reverse, in one line. (A path that does not
    exist is left to the listing, which says so; a CSV with both an image path column and a text
    column suits either kind.)"""
    source = spec.source
    if source not in NAMED_SOURCES and source not in text_data_lib.NAMED and not Path(source).exists():
        return
    text_data = text_data_lib.is_text_source(source, spec.text_column)
    if text_data and _is_labels_file(Path(source)) and _has_path_column(Path(source)):
        text_data = text_model
    if text_data and not text_model:
        raise FactoryError(f"--data {spec.source} holds text but the backbone reads images: use a text encoder "
                           f"(--backbone {' or '.join(TEXT_BACKBONES)})")
    if text_model and not text_data:
        raise FactoryError(f"--data {spec.source} holds no text (a class folder of .txt files, a .csv with a "
                           f"{spec.text_column!r} column, or a .jsonl file) but the backbone is a text encoder")


def _load_texts(spec, tokenizer) -> Dataset:
    """A text source listed, subset and split like images; texts are tokenized as they are read,
    and keyed by their UTF-8 bytes (the cache's extractor fingerprint holds the tokenizer's)."""
    texts, labels, class_names, skipped = text_data_lib.list_texts(
        spec.source, text_column=spec.text_column, label_column=spec.label_column, strict=spec.strict)
    keep = stratified_subset(labels, spec.limit, spec.seed)
    texts, labels = [texts[i] for i in keep], labels[keep]
    _check_class_counts(labels, class_names, spec.source, "text(s)")
    keys = [hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts]
    everything = Split(texts, labels, keys, tokenizer.max_length, tokenizer)
    train, val, test = _stratified_split(labels, spec.val_fraction, spec.test_fraction, spec.seed)
    return Dataset(source=spec.source, class_names=class_names, train=everything.subset(train),
                   val=everything.subset(val), test=everything.subset(test), skipped=skipped)


def _try(function, *args):
    try:
        return function(*args), None
    except DECODE_ERRORS as exc:
        return None, exc


def check_source(spec, backbone: str) -> None:
    """Refuse a DataSpec's source that cannot be listed, without listing it: a missing folder, one
    without class sub-folders or with only one, a labels file without its columns, a named
    source that is not installed, text for an image backbone (or the reverse)."""
    source = spec.source
    check_kind(spec, text_model=modality(backbone) == "text")
    if source in NAMED_SOURCES:
        if source == "fashion-mnist":
            _fashion_mnist_files()
    elif text_data_lib.is_text_source(source, spec.text_column):
        text_data_lib.check(source)
    elif _is_labels_file(Path(source)):
        with _open_labels_file(Path(source)) as rows:
            next(rows, None)
    else:
        class_dirs(Path(source))


# --- a labels file: one row per image, its path (relative to the file's folder) and label ----
PATH_COLUMNS = ("path", "image", "image_path", "filename", "file", "img")
LABEL_COLUMNS = ("label", "class", "class_name", "category", "choice")


def regular_file_problem(path) -> str | None:
    """Why `path` cannot be read as a file (missing, or a folder, a device or a pipe), else None."""
    path = Path(path)
    return None if path.is_file() else "not a regular file" if path.exists() else "no such file"


def _is_labels_file(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _has_path_column(path: Path) -> bool:
    """A labels file whose header names an image path column (or that has two columns without one)."""
    try:
        with _open_labels_file(path):
            return True
    except FactoryError:
        return False


@contextmanager
def _open_labels_file(path: Path):
    """(line, path text, label text) rows of a labels file; its header names the columns (any
    of PATH_COLUMNS and LABEL_COLUMNS); a file without one has the path first, the label second."""
    problem = regular_file_problem(path)
    if problem:
        raise FactoryError(f"--data {path}: {problem}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(bounded_lines(handle))
            first = next((row for row in reader if any(cell.strip() for cell in row)), None)
            if first is None:
                raise FactoryError(f"--data {path}: the labels file is empty")
            rows = ((reader.line_num, row) for row in reader)  # the line a row ends on
            names = [name.strip().lower() for name in first]
            path_column = next((names.index(n) for n in PATH_COLUMNS if n in names), None)
            label_column = next((names.index(n) for n in LABEL_COLUMNS if n in names), None)
            if path_column is None or label_column is None:
                if len(first) != 2 or Path(first[0].strip()).suffix.lower() not in IMAGE_EXTENSIONS:
                    raise FactoryError(
                        f"--data {path}: no path and label columns in its header {first[:6]}; name them "
                        f"{PATH_COLUMNS[0]!r} and {LABEL_COLUMNS[0]!r}, or give two columns without a header")
                path_column, label_column = 0, 1
                rows = itertools.chain([(reader.line_num, first)], rows)
            yield ((line, row[path_column] if len(row) > path_column else "",
                    row[label_column] if len(row) > label_column else "")
                   for line, row in rows if any(row))
    except (csv.Error, UnicodeDecodeError, OSError) as exc:
        raise FactoryError(f"--data {path}: not a readable labels file ({exc})") from None


MAX_LINE = 1 << 20  # characters in one line of a labels file (or a text CSV / JSON Lines file)


def bounded_lines(handle):
    """The file's lines, refusing one longer than MAX_LINE (never read whole into memory)."""
    while line := handle.readline(MAX_LINE + 1):
        if len(line) > MAX_LINE:
            raise csv.Error(f"a line longer than {MAX_LINE:,} characters")
        yield line


def _labels_file_source(path: Path, strict: bool):
    items, names, skipped, listed = [], [], [], {}
    with _open_labels_file(path) as rows:
        for line, image, label in rows:
            image, label = image.strip(), label.strip()
            problem = f"no {'image path' if not image else 'label'}" if not image or not label else None
            item = path.parent / image
            where = os.path.abspath(item)
            if problem is None and where in listed:
                problem = f"{image} is already listed on line {listed[where]}"
            if problem:
                if strict:
                    raise FactoryError(f"{path} line {line}: {problem}; fix the row or remove it")
                skipped.append(f"{path} line {line}: {problem}")
                continue
            if not label.isprintable():
                raise FactoryError(f"{path} line {line}: the label {label!r} holds characters that cannot be printed")
            listed[where] = line
            items.append(item)
            names.append(label)
    class_names = sorted(set(names))
    if len(class_names) < 2:
        raise FactoryError(f"--data {path}: {len(class_names)} label(s); a classifier needs at least two classes")
    index = {name: i for i, name in enumerate(class_names)}
    return items, np.asarray([index[n] for n in names]), class_names, skipped


def class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FactoryError(
            f"--data {root}: no such folder and not a named source "
            f"({', '.join([*NAMED_SOURCES, *text_data_lib.NAMED])})"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FactoryError(f"--data {root}: no class sub-folders; put images (or .txt files) in {root}/<class name>/")
    if len(folders) < 2:
        raise FactoryError(
            f"--data {root}: only one class ({folders[0].name}); a classifier needs at least two class folders"
        )
    return folders


def _folder_source(root: Path):
    folders = class_dirs(root)
    items, labels = [], []
    for label, class_dir in enumerate(folders):
        files = sorted(
            p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise FactoryError(
                f"class folder {class_dir} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add some or remove it"
            )
        items += files
        labels += [label] * len(files)
    return items, np.asarray(labels), [d.name for d in folders]


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


def _fashion_mnist_files() -> list[Path]:
    files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [f for f in files if not (FASHION_MNIST_DIR / f).is_file()]
    if missing:
        raise FactoryError(
            f"fashion-mnist is not installed ({FASHION_MNIST_DIR} lacks {missing[0]}): "
            "apt-get install dataset-fashion-mnist"
        )
    return [FASHION_MNIST_DIR / f for f in files]


def _fashion_mnist():
    train_x, train_y, test_x, test_y = map(_read_idx, _fashion_mnist_files())
    images = np.concatenate([train_x, test_x])
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    return list(images), labels, list(FASHION_MNIST_CLASSES)


# Named sources: name -> loader returning (items, labels, class names); an item is a path or an array.
NAMED_SOURCES = {
    "fashion-mnist": _fashion_mnist,
    "digits": _digits,
}


def stratified_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
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


def _check_class_counts(labels: np.ndarray, class_names: list[str], source: str, what: str = "image(s)") -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    for name, count in zip(class_names, counts):
        if count < 3:
            raise FactoryError(
                f"--data {source}: class {name!r} has {count} usable {what}; at least 3 are needed "
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
