"""The artifact store: immutable, versioned releases that mobile apps and demos fetch.

Layout: STORE/<model>/<version>/{artifacts, labels.txt, manifest.json[, manifest.json.sig]} and
STORE/<model>/LATEST (a one-line file naming the newest version). A release is copied into a
hidden folder (`.VERSION.incoming-PID-xyz`), signed there, and renamed into place in one step,
so a killed publish never leaves a half release visible, and an existing version is never
overwritten. Anything read from the store is treated as hostile: symlinked or hidden entries
are invisible, and a release whose manifest cannot be trusted is reported as damaged.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from factory import manifest as manifest_lib, signing, staging
from factory.release_manifest import Damaged, parse as parse_manifest
from targets.errors import FactoryError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
LATEST = "LATEST"
MANIFEST_NAME = manifest_lib.MANIFEST_NAME
SIGNATURE_NAME = MANIFEST_NAME + signing.SIGNATURE_SUFFIX
MANIFEST_LIMIT = 8 << 20  # bytes: a manifest is a few kB
_CHUNK = 1 << 20

__all__ = ["Damaged", "parse_manifest"]  # re-exported for the server and fetch


def check_name(kind: str, value: str) -> str:
    if not NAME_PATTERN.match(value or "") or value in (".", ".."):
        raise FactoryError(f"{kind} {value!r} is not allowed: use letters, digits, '.', '_' or '-' (max 64)")
    return value


def is_plain_dir(path: Path) -> bool:
    """A real folder, not a symlink to one (never raises)."""
    try:
        return Path(path).is_dir() and not Path(path).is_symlink()
    except OSError:
        return False


def _listing(folder: Path) -> list[str]:
    try:
        return [p.name for p in Path(folder).iterdir()]
    except OSError:
        return []


def versions(store: Path, model: str) -> list[str]:
    """The visible versions of `model`: plain folders with allowed names (never symlinks)."""
    folder = Path(store) / model
    if not NAME_PATTERN.match(model) or not is_plain_dir(folder):
        return []
    found = [v for v in _listing(folder) if NAME_PATTERN.match(v) and is_plain_dir(folder / v)]
    return sorted(found, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))


def models(store: Path) -> list[str]:
    store = Path(store)
    return sorted(m for m in _listing(store) if versions(store, m))


def latest(store: Path, model: str) -> str | None:
    """The version LATEST names, if it names a visible version (see `latest_problem`)."""
    named = _latest_text(Path(store) / model / LATEST)
    return named if named in versions(store, model) else None


def _latest_text(pointer: Path) -> str | None:
    try:
        if pointer.is_symlink() or not pointer.is_file():
            return None
        with open(pointer, "rb") as f:
            text = f.read(256).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text


def latest_problem(store: Path, model: str) -> str | None:
    """Why `model`'s LATEST is stale, or None when it names the newest visible version."""
    found = versions(store, model)
    named = _latest_text(Path(store) / model / LATEST)
    if named is None:
        return f"{model}: no readable LATEST file; publish again to write it"
    if named not in found:
        return f"{model}: LATEST names {named[:64]!r}, which is not a published version"
    numbered = [v for v in found if v.isdigit()]
    if named.isdigit() and numbered and int(numbered[-1]) > int(named):
        return f"{model}: LATEST names {named} but {numbered[-1]} is newer (a publish was interrupted?)"
    return None


# --- reading releases -------------------------------------------------------------------------
def _open_regular(path: Path):
    """`path` opened for reading if it is a regular file: never a symlink, and never a FIFO or device,
    whose read could block a server thread (or `factory models`) forever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb")


def read_manifest_bytes(release: Path) -> bytes:
    path = Path(release) / MANIFEST_NAME
    try:
        with _open_regular(path) as f:
            data = f.read(MANIFEST_LIMIT + 1)
    except FileNotFoundError:
        raise Damaged(f"{release}: no {MANIFEST_NAME}") from None
    except OSError as exc:
        raise Damaged(f"{release}: {MANIFEST_NAME} is unreadable ({exc.strerror or exc})") from None
    if len(data) > MANIFEST_LIMIT:
        raise Damaged(f"{release}: {MANIFEST_NAME} is larger than {MANIFEST_LIMIT >> 20} MB")
    return data


def read_release(store: Path, model: str, version: str) -> tuple[bytes, dict]:
    """(manifest bytes, parsed manifest) of a visible release; Damaged when it cannot be trusted."""
    release = Path(store) / model / version
    if version not in versions(store, model):
        raise FactoryError(f"{model} has no version {version!r}")
    data = read_manifest_bytes(release)
    return data, parse_manifest(data, f"{model} {version}")


def read_signature(release: Path) -> bytes | None:
    path = Path(release) / SIGNATURE_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        with _open_regular(path) as f:
            return f.read(signing.SIGNATURE_BYTES + 1)
    except OSError as exc:
        raise Damaged(f"{release}: {SIGNATURE_NAME} is unreadable ({exc.strerror or exc})") from None


def file_problem(release: Path, relative: str, entry: dict) -> str | None:
    """Why `release/relative` does not match its manifest entry, or None."""
    path = Path(release)
    for part in relative.split("/"):
        path = path / part
        if path.is_symlink():
            return f"{relative} is a symlink"
    try:
        if not path.is_file():
            return f"{relative} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{relative} is {size} bytes, the manifest says {entry['bytes']}"
        if manifest_lib.sha256(path) != entry["sha256"]:
            return f"{relative} fails its sha256"
    except OSError as exc:
        return f"{relative} is unreadable ({exc.strerror or exc})"
    return None


def release_name_problem(manifest: dict, model: str, version: str, required: bool) -> str | None:
    """Why `manifest` is not the release `model` `version` (its "release" field, written by publish and
    covered by the signature), or None. Without the field only a `required` check fails."""
    named = manifest.get("release")
    if named is None and not required:
        return None
    if named != {"model": model, "version": version}:
        shown = f"{named.get('model')!s:.64} {named.get('version')!s:.64}" if isinstance(named, dict) else "no release"
        return (f"the manifest names {shown}, not {model} {version} (a release served under another name or "
                "version); refusing it")
    return None


@dataclass
class ReleaseCheck:
    model: str
    version: str
    problems: list[str] = field(default_factory=list)
    signature: str = "unsigned"  # unsigned, not checked, or verified (key id)


def check_release(store: Path, model: str, version: str, trusted: signing.Ed25519PublicKey | None) -> ReleaseCheck:
    result = ReleaseCheck(model, version)
    release = Path(store) / model / version
    try:
        data, manifest = read_release(store, model, version)
        signature = read_signature(release)
    except FactoryError as exc:
        result.problems.append(str(exc))
        return result
    for relative, entry in manifest["files"].items():
        problem = file_problem(release, relative, entry)
        if problem:
            result.problems.append(problem)
    listed = {*manifest["files"], MANIFEST_NAME, SIGNATURE_NAME}
    for path in sorted(release.rglob("*")):
        relative = path.relative_to(release).as_posix()
        if not path.is_dir() and relative not in listed:
            result.problems.append(f"{relative} is not in the manifest (never served)")
    problem = release_name_problem(manifest, model, version, required=trusted is not None)
    if problem:
        result.problems.append(problem)
    if signature is not None:
        result.signature = "not checked"
    if trusted is not None:
        try:
            signing.check(data, signature, trusted, f"{model} {version}")
            result.signature = f"verified by key {signing.key_id(trusted)}"
        except FactoryError as exc:
            result.problems.append(str(exc))
    return result


def check(store: Path, trusted: signing.Ed25519PublicKey | None = None) -> list[ReleaseCheck]:
    """Every visible release checked file by file against its manifest (and signature)."""
    return [check_release(store, model, version, trusted) for model in models(store) for version in versions(store, model)]


# --- publishing -------------------------------------------------------------------------------
def publish(build_dir: Path, store: Path, model: str, version: str | None = None,
            sign_key: Path | None = None) -> Path:
    """Copy a finished build into the store as a new version; returns the release folder.

    Only the files the build's manifest lists are copied, each checked against its sha256;
    with `sign_key` the manifest's exact bytes are signed into manifest.json.sig. All of it is
    written to a hidden folder first, then renamed into place, then LATEST is updated.
    """
    build_dir, store = Path(build_dir), Path(store)
    check_name("model name", model)
    key = signing.load_private_key(sign_key) if sign_key is not None else None
    if not (build_dir / MANIFEST_NAME).is_file():
        raise FactoryError(f"{build_dir} is not a finished build (no {MANIFEST_NAME})")
    manifest_bytes = read_manifest_bytes(build_dir)
    manifest = parse_manifest(manifest_bytes, f"build {build_dir}")
    model_dir = store / model
    model_dir.mkdir(parents=True, exist_ok=True)
    if not is_plain_dir(model_dir):
        raise FactoryError(f"{model_dir} is not a plain folder (a symlink?); refusing to publish into it")
    if version is None:
        numbered = [int(v) for v in versions(store, model) if v.isdigit()]
        version = str(max(numbered, default=0) + 1)
    check_name("version", version)
    release = model_dir / version
    if release.exists() or release.is_symlink():
        raise FactoryError(f"{model} version {version} is already published; versions are never overwritten")
    # the release names itself, so a signature cannot be replayed for another model or version
    manifest_bytes = (json.dumps({**manifest, "release": {"model": model, "version": version}}, indent=2) + "\n").encode()
    incoming = staging.work_dir(model_dir, version, "incoming")
    try:
        for relative, entry in manifest["files"].items():
            _copy_verified(build_dir, incoming, relative, entry)
        _write_file(incoming / MANIFEST_NAME, manifest_bytes)
        if key is not None:
            _write_file(incoming / SIGNATURE_NAME, signing.sign(manifest_bytes, key))
        incoming.chmod(0o755)
        _fsync_dir(incoming)
        try:
            os.rename(incoming, release)  # atomic; fails if another publisher took the version
        except OSError as exc:
            raise FactoryError(f"{model} version {version} is already published; versions are never overwritten") from exc
        _fsync_dir(model_dir)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    _write_atomically(model_dir / LATEST, version + "\n")
    return release


def _copy_verified(build_dir: Path, incoming: Path, relative: str, entry: dict) -> None:
    source = build_dir / relative
    if any((build_dir / Path(*Path(relative).parts[:i + 1])).is_symlink() for i in range(len(Path(relative).parts))):
        raise FactoryError(f"build {build_dir}: {relative} is a symlink; refusing to publish it")
    destination = incoming / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    try:
        with open(source, "rb") as src, open(destination, "xb") as dst:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as exc:
        raise FactoryError(f"build {build_dir}: cannot copy {relative} ({exc.strerror or exc})") from None
    os.chmod(destination, 0o644)
    if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
        raise FactoryError(f"build {build_dir}: {relative} differs from its manifest (changed after the build?); "
                           "rebuild before publishing")


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = staging.work_file(path.parent, path.name, "incoming")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# --- listing and cleaning ---------------------------------------------------------------------
def summary(store: Path) -> list[dict]:
    """One row per visible version for `factory models`: targets, accuracy and size, or why it is damaged."""
    rows = []
    for model in models(store):
        newest = latest(store, model)
        for version in versions(store, model):
            row = {"model": model, "version": version, "latest": version == newest, "damaged": None}
            try:
                manifest = read_release(store, model, version)[1]
            except FactoryError as exc:
                rows.append({**row, "damaged": str(exc)})
                continue
            rows.append({
                **row,
                "backbone": _text(manifest.get("backbone"), "name"),
                "strategy": _text(manifest.get("strategy"), "name"),
                "keras_accuracy": _number(manifest.get("metrics"), "keras_test_accuracy"),
                "artifacts": [{"target": a["target"], "quantize": a["quantize"],
                               "accuracy": _number(a, "accuracy"), "bytes": sum(manifest["files"][f]["bytes"] for f in a["files"])}
                              for a in manifest["artifacts"]],
                "created": str(manifest.get("created", "?"))[:32],
                "signed": (Path(store) / model / version / SIGNATURE_NAME).is_file(),
            })
    return rows


def _text(section, key: str) -> str:
    value = section.get(key) if isinstance(section, dict) else None
    return str(value)[:64] if value is not None else "?"


def _number(section, key: str) -> float | None:
    value = section.get(key) if isinstance(section, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gc(store: Path) -> tuple[list[staging.Leftover], list[staging.Leftover]]:
    """Remove the store's leftovers of killed publishes; returns (removed, kept because possibly in use)."""
    store = Path(store)
    if not is_plain_dir(store):
        raise FactoryError(f"store {store} does not exist or is not a folder")
    found = [item for name in sorted(_listing(store)) if NAME_PATTERN.match(name) and is_plain_dir(store / name)
             for item in staging.leftovers(store / name)]
    return clean(found)


def clean(found: list[staging.Leftover]) -> tuple[list[staging.Leftover], list[staging.Leftover]]:
    removed, kept = [], []
    for item in found:
        if item.alive:
            kept.append(item)
            continue
        staging.remove(item)
        removed.append(item)
    return removed, kept
