"""Parse a release's manifest.json as hostile input: every field the delivery tools use is checked.

A file path must be a plain relative name inside the release: '/'-separated parts of letters,
digits, '.', '_' and '-', none empty, none starting with '.', so no '..', no absolute path, no
backslash, drive letter, NUL or hidden staging name; no duplicates (also ignoring case), and
no file may sit where another file's folder would be.
"""
from __future__ import annotations

import json
import re

from targets.errors import FactoryError

MANIFEST_NAME = "manifest.json"
RESERVED = {MANIFEST_NAME, MANIFEST_NAME + ".sig"}
_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}\Z")
MAX_PATH = 512
MAX_DEPTH = 8
MAX_FILES = 10_000
MAX_FILE_BYTES = 1 << 40


class Damaged(FactoryError):
    """A release (or a served manifest) that cannot be trusted as it is."""


def parse(data: bytes, where: str) -> dict:
    """The manifest in `data`, checked; Damaged (one line naming `where`) if anything is off."""
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise Damaged(f"{where}: {MANIFEST_NAME} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise Damaged(f"{where}: {MANIFEST_NAME} is not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(manifest, dict):
        raise Damaged(f"{where}: {MANIFEST_NAME} is not a JSON object")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
        raise Damaged(f"{where}: {MANIFEST_NAME} lists no files (or more than {MAX_FILES})")
    for relative, entry in files.items():
        check_path(relative, where)
        if not (isinstance(entry, dict) and _count(entry.get("bytes"))
                and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])):
            raise Damaged(f"{where}: {MANIFEST_NAME} entry {relative!r} needs 'bytes' (0..2^40) and a hex 'sha256'")
    _check_collisions(list(files), where)
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, list) or not artifacts:
        raise Damaged(f"{where}: {MANIFEST_NAME} lists no artifacts")
    for artifact in artifacts:
        _check_artifact(artifact, files, where)
    return manifest


def check_path(relative, where: str) -> str:
    if not isinstance(relative, str) or len(relative) > MAX_PATH:
        raise Damaged(f"{where}: a file path in {MANIFEST_NAME} is not a string of at most {MAX_PATH} characters")
    parts = relative.split("/")
    if len(parts) > MAX_DEPTH or not all(_PART.match(part) for part in parts) or relative in RESERVED:
        raise Damaged(f"{where}: {MANIFEST_NAME} lists {relative[:80]!r}, which is not a plain relative name "
                      "inside the release; refusing it")
    return relative


def _no_duplicate_keys(pairs: list) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:80]!r}")
        result[key] = value
    return result


def _check_collisions(paths: list[str], where: str) -> None:
    folded = {}
    for path in paths:
        key = path.lower()
        if key in folded:
            raise Damaged(f"{where}: {MANIFEST_NAME} lists {path!r} and {folded[key]!r}, the same name ignoring case")
        folded[key] = path
    for path in paths:
        parts = path.lower().split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in folded:
                raise Damaged(f"{where}: {MANIFEST_NAME} lists {path!r} inside {folded['/'.join(parts[:i])]!r}, "
                              "which is a file")


def _check_artifact(artifact, files: dict, where: str) -> None:
    if not (isinstance(artifact, dict) and all(isinstance(artifact.get(k), str) and _LABEL.match(artifact[k])
                                               for k in ("target", "quantize"))):
        raise Damaged(f"{where}: {MANIFEST_NAME} has an artifact without a plain 'target' and 'quantize'")
    listed = artifact.get("files")
    if not isinstance(listed, list) or not listed or len(set(map(str, listed))) != len(listed):
        raise Damaged(f"{where}: {MANIFEST_NAME} artifact {artifact['target']} {artifact['quantize']} lists no files "
                      "(or one twice)")
    for relative in listed:
        if not isinstance(relative, str) or relative not in files:
            raise Damaged(f"{where}: {MANIFEST_NAME} artifact {artifact['target']} {artifact['quantize']} names "
                          f"{str(relative)[:80]!r}, which is not in its file list")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_FILE_BYTES
