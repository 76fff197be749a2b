"""Text sources: list labelled texts, skipping (or, strict, refusing) the ones that cannot be used.

A text source is one of:
  - a folder with one sub-folder per class holding `.txt` files, one example per file (UTF-8);
  - a CSV file with a header naming a text column and a label column (`--text-column`,
    `--label-column`; default `text` and `label`);
  - a JSON Lines file (`.jsonl`): one object per line with those two keys;
  - `debian-packages`: 2,566 Debian package descriptions labelled with their archive section
    (10 sections), a snapshot pinned in factory/datasets/; `debian-summaries`: the same
    packages, each text only its one-line summary.

Empty texts, bytes that are not UTF-8, rows without a label and unparsable lines are skipped
and reported ("where: why"); with `strict` the first one fails the build; a class folder left
without texts is refused. factory.data splits what is kept exactly like images (a split
tokenizes each text as it is read).
"""
from __future__ import annotations

import csv
import json
import unicodedata
from pathlib import Path

import numpy as np

from factory.datasets import debian_descriptions
from targets.errors import FactoryError

TEXT_EXTENSIONS = {".txt"}
TEXT_FILES = {".csv", ".jsonl"}
MAX_TEXT_BYTES = 1 << 20  # a longer example is refused (it would be truncated to a few hundred tokens anyway)
NAMED = {"debian-packages": debian_descriptions.descriptions,  # each opens its JSON Lines
         "debian-summaries": debian_descriptions.summaries}


def is_text_source(source: str, text_column: str) -> bool:
    """Whether `source` holds text: a named text source, a .jsonl file, a CSV whose header has
    `text_column`, or a class folder holding more .txt files than images (a README.txt among
    photos does not make them text)."""
    if source in NAMED:
        return True
    path = Path(source)
    if path.suffix.lower() == ".jsonl":
        return True
    if path.suffix.lower() == ".csv":
        return path.is_file() and text_column.lower() in _csv_header(path)
    if not path.is_dir():
        return False
    from factory.data import IMAGE_EXTENSIONS

    suffixes = [f.suffix.lower() for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")
                for f in d.rglob("*") if f.is_file()]
    return sum(s in TEXT_EXTENSIONS for s in suffixes) > sum(s in IMAGE_EXTENSIONS for s in suffixes)


def check(source: str) -> None:
    """Refuse a text source that cannot be listed, without reading it: a missing file, or a
    folder without two class sub-folders."""
    from factory.data import class_dirs, regular_file_problem

    path = Path(source)
    if source in NAMED:
        return
    if path.suffix.lower() in TEXT_FILES:
        problem = regular_file_problem(path)
        if problem:
            raise FactoryError(f"--data {path}: {problem}")
    else:
        class_dirs(path)


def _csv_header(path: Path) -> list[str]:
    from factory.data import MAX_LINE

    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [name.strip().lower() for name in next(csv.reader([handle.readline(MAX_LINE)]), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


class _Listing:
    """Collects (text, label) pairs and the skipped ones. With `classes` (a folder's class
    folders) those are the classes, each needing texts; else the labels found are."""

    def __init__(self, strict: bool, classes: list[str] | None = None):
        self.strict, self.classes = strict, classes
        self.texts: list[str] = []
        self.names: list[str] = []
        self.skipped: list[str] = []

    def add(self, where: str, text, label: str) -> None:
        problem = ("the text is not a string" if not isinstance(text, str)
                   else "not valid Unicode (a lone surrogate)" if not _encodable(text)
                   else "empty text" if _blank(text) else "no label" if not label else None)
        if problem:
            self.skip(where, problem)
            return
        if not label.isprintable():
            raise FactoryError(f"{where}: the label {label!r} holds characters that cannot be printed")
        self.texts.append(text)
        self.names.append(label)

    def skip(self, where: str, problem: str) -> None:
        if self.strict:
            raise FactoryError(f"{where}: {problem}; fix it or remove it (or drop --strict-data to skip it)")
        self.skipped.append(f"{where}: {problem}")

    def result(self, source: str):
        class_names = self.classes if self.classes is not None else sorted(set(self.names))
        if not self.texts:
            raise FactoryError(f"--data {source}: no usable texts")
        if len(class_names) < 2:
            raise FactoryError(f"--data {source}: {len(class_names)} label(s); a classifier needs at least two classes")
        index = {name: i for i, name in enumerate(class_names)}
        return self.texts, np.asarray([index[n] for n in self.names], dtype=np.int64), class_names, self.skipped


def _blank(text: str) -> bool:
    """Nothing a tokenizer keeps: whitespace, control and format characters only (NUL, ZWSP)."""
    return all(ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in text)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # JSON's "\ud800": no tokenizer takes it
        return False


def list_texts(source: str, *, text_column: str = "text", label_column: str = "label", strict: bool = False):
    """(texts, labels, class names, skipped) of a text source."""
    listing = _Listing(strict)
    if source in NAMED:
        with NAMED[source]() as handle:
            _jsonl(handle, source, "text", "label", listing)
        return listing.result(source)
    path = Path(source)
    if path.suffix.lower() in TEXT_FILES:
        check(source)
        try:
            with path.open(newline="", encoding="utf-8-sig", errors="strict") as handle:
                reader = _csv if path.suffix.lower() == ".csv" else _jsonl
                reader(handle, str(path), text_column, label_column, listing)
        except UnicodeDecodeError as exc:
            raise FactoryError(f"--data {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:  # a JSON Lines file's line over data.MAX_LINE (a CSV's says so itself)
            raise FactoryError(f"--data {path}: {exc}") from None
        except OSError as exc:
            raise FactoryError(f"--data {path}: unreadable ({exc.strerror or exc})") from None
    else:
        _folder(path, listing)
    return listing.result(source)


def _csv(handle, where: str, text_column: str, label_column: str, listing: _Listing) -> None:
    from factory.data import MAX_LINE, bounded_lines

    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE))  # a text cell may be as long as a line
    reader = csv.reader(bounded_lines(handle))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [c for c in (text_column, label_column) if c.lower() not in header]
        if missing:
            raise FactoryError(f"--data {where}: no {' and no '.join(map(repr, missing))} column in its header "
                               f"{header[:6]}; name the columns with --text-column and --label-column")
        text_at, label_at = header.index(text_column.lower()), header.index(label_column.lower())
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = f"{where} line {reader.line_num}"
            listing.add(line, row[text_at] if len(row) > text_at else "",
                        row[label_at].strip() if len(row) > label_at else "")
    except csv.Error as exc:
        raise FactoryError(f"--data {where}: not a readable CSV file ({exc})") from None


def _jsonl(handle, where: str, text_column: str, label_column: str, listing: _Listing) -> None:
    from factory.data import bounded_lines

    for number, line in enumerate(bounded_lines(handle), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:  # JSONDecodeError, or an integer of more than 4,300 digits
            listing.skip(f"{where} line {number}", f"not JSON ({getattr(exc, 'msg', exc)})")
            continue
        except RecursionError:  # "[[[[...": nested deeper than Python's parser goes
            listing.skip(f"{where} line {number}", "not JSON (nested too deeply)")
            continue
        if not isinstance(row, dict):
            listing.skip(f"{where} line {number}", "not a JSON object")
            continue
        row = {key.lower(): value for key, value in row.items()}  # column names as in a CSV header
        label = row.get(label_column.lower())
        if label is not None and not isinstance(label, (str, int)):  # a bool is an int: true / false labels
            listing.skip(f"{where} line {number}", f"the label is {type(label).__name__}, not a string or an integer")
            continue
        listing.add(f"{where} line {number}", row.get(text_column.lower()), "" if label is None else str(label).strip())


def _folder(root: Path, listing: _Listing) -> None:
    from factory.data import class_dirs

    folders = class_dirs(root)
    listing.classes = [d.name for d in folders]  # a class whose every text is skipped is then refused
    for class_dir in folders:
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in TEXT_EXTENSIONS)
        if not files:
            raise FactoryError(f"class folder {class_dir} has no .txt files; add some or remove it")
        for path in files:
            text, problem = _read_text(path)
            if problem:
                listing.skip(str(path), problem)
            else:
                listing.add(str(path), text, class_dir.name)


def _read_text(path: Path) -> tuple[str | None, str | None]:
    """A text file's contents, or why it cannot be used."""
    if not path.is_file():
        return None, "not a regular file"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if len(raw) > MAX_TEXT_BYTES:
        return None, f"larger than {MAX_TEXT_BYTES >> 20} MiB"
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
