"""manifest.json: what was built, from what, with which results, and every file's sha256."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import zlib
from datetime import datetime, timezone
from pathlib import Path

PACKAGES = [
    "edgefactory", "tensorflow", "tf-keras", "tensorflow-hub", "tensorflow-model-optimization",
    "tensorflowjs", "ai-edge-litert", "numpy",
]
MANIFEST_NAME = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gzip_size(path: Path) -> int:
    """Bytes of `path` gzip-compressed at the highest level: what a download over HTTP costs."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            size += len(compressor.compress(chunk))
    return size + len(compressor.flush())


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_entries(folder: Path) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} for every file under `folder` but the manifest."""
    return {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def write(folder: Path, body: dict) -> Path:
    manifest = {
        "format": "edgefactory-manifest/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **body,
        "versions": package_versions(),
        "files": file_entries(folder),
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST_NAME).read_text())
