"""The artifact store: immutable, versioned releases that mobile apps and demos fetch.

Layout: STORE/<model>/<version>/{artifacts, labels.txt, manifest.json} and STORE/<model>/LATEST
(a one-line file naming the newest version). A release is copied into a hidden folder and
renamed into place in one step, so a killed publish never leaves a half release visible, and
an existing version is never overwritten.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from factory import manifest as manifest_lib
from targets.errors import FactoryError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LATEST = "LATEST"


def check_name(kind: str, value: str) -> str:
    if not NAME_PATTERN.match(value or "") or value in (".", ".."):
        raise FactoryError(f"{kind} {value!r} is not allowed: use letters, digits, '.', '_' or '-' (max 64)")
    return value


def versions(store: Path, model: str) -> list[str]:
    folder = Path(store) / model
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda v: (0, int(v)) if v.isdigit() else (1, v))


def latest(store: Path, model: str) -> str | None:
    pointer = Path(store) / model / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def models(store: Path) -> list[str]:
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith(".") and versions(store, p.name))


def publish(build_dir: Path, store: Path, model: str, version: str | None = None) -> Path:
    """Copy a finished build into the store as a new version; returns the release folder."""
    build_dir, store = Path(build_dir), Path(store)
    check_name("model name", model)
    if not (build_dir / manifest_lib.MANIFEST_NAME).is_file():
        raise FactoryError(f"{build_dir} is not a finished build (no {manifest_lib.MANIFEST_NAME})")
    model_dir = store / model
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        numbered = [int(v) for v in versions(store, model) if v.isdigit()]
        version = str(max(numbered, default=0) + 1)
    check_name("version", version)
    release = model_dir / version
    if release.exists():
        raise FactoryError(f"{model} version {version} is already published; versions are never overwritten")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.incoming-", dir=model_dir))
    try:
        shutil.copytree(build_dir, staging, dirs_exist_ok=True)
        staging.chmod(0o755)
        try:
            os.rename(staging, release)  # atomic; fails if another publisher took the version
        except OSError as exc:
            raise FactoryError(f"{model} version {version} is already published; versions are never overwritten") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_atomically(model_dir / LATEST, version + "\n")
    return release


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def summary(store: Path) -> list[dict]:
    """One row per published version: targets, accuracy and size, for `factory models`."""
    rows = []
    for model in models(store):
        newest = latest(store, model)
        for version in versions(store, model):
            manifest = manifest_lib.read(Path(store) / model / version)
            rows.append({
                "model": model,
                "version": version,
                "latest": version == newest,
                "backbone": manifest["backbone"]["name"],
                "strategy": manifest["strategy"]["name"],
                "keras_accuracy": manifest["metrics"]["keras_test_accuracy"],
                "artifacts": [
                    {"target": a["target"], "quantize": a["quantize"], "accuracy": a["accuracy"], "bytes": a["bytes"]}
                    for a in manifest["artifacts"]
                ],
                "created": manifest["created"],
            })
    return rows
