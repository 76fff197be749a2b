"""Fetch a published artifact over HTTP and verify every file against the release manifest."""
from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

from factory import manifest as manifest_lib, output
from targets.errors import FactoryError


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise FactoryError(f"{url}: HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise FactoryError(f"{url}: cannot connect ({exc.reason}); is `factory serve` running?") from exc


def fetch(base_url: str, model: str, out: Path, *, version: str | None = None, target: str = "tflite",
          quantize: str | None = None) -> dict:
    """Download one artifact (plus labels.txt and manifest.json) into `out`; returns its entry.

    Nothing is written to `out` unless every file matches its sha256 in the manifest.
    """
    base_url = base_url.rstrip("/")
    if version is None:
        latest = json.loads(_get(f"{base_url}/models/{model}/latest"))
        version = latest["version"]
    release_url = f"{base_url}/models/{model}/{version}"
    manifest_bytes = _get(f"{release_url}/{manifest_lib.MANIFEST_NAME}")
    manifest = json.loads(manifest_bytes)
    candidates = [a for a in manifest["artifacts"] if a["target"] == target and quantize in (None, a["quantize"])]
    if not candidates:
        offered = ", ".join(f"{a['target']} {a['quantize']}" for a in manifest["artifacts"])
        raise FactoryError(f"{model} version {version} has no {target} {quantize or ''} artifact (it has: {offered})")
    artifact = candidates[0]
    with output.staged(Path(out)) as staging:
        for relative in [*artifact["files"], "labels.txt"]:
            data = _get(f"{release_url}/{relative}")
            expected = manifest["files"][relative]["sha256"]
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise FactoryError(
                    f"{relative} from {release_url} fails its checksum (sha256 {actual[:12]}…, manifest says "
                    f"{expected[:12]}…): the served copy is corrupt or tampered; nothing was written"
                )
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
        (staging / manifest_lib.MANIFEST_NAME).write_bytes(manifest_bytes)
    return {**artifact, "model": model, "version": version}
