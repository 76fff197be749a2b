"""Fetch a published artifact over HTTP and verify every file against the release manifest.

Everything the server sends is hostile until checked: the manifest's paths must be plain
relative names, each file is streamed into a staging folder beside --out with a running sha256
and refused at the first byte past the size its manifest gives, every request has a socket
timeout and the whole fetch a deadline, and on any refusal everything written is removed.
With a trusted public key the manifest's signature is checked before anything is downloaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from http.client import HTTPException
from pathlib import Path

from factory import signing, staging, store as store_lib
from factory.release_manifest import Damaged, parse as parse_manifest
from targets.errors import FactoryError

TIMEOUT_S = 30.0  # connect, and every read
DEADLINE_S = 900.0  # the whole fetch
LATEST_LIMIT = store_lib.MANIFEST_LIMIT + 65_536  # /latest carries the manifest
_CHUNK = 65_536


class _TooLarge(FactoryError):
    def __init__(self, url: str, detail: str):
        super().__init__(f"{url}: {detail}; refusing it")
        self.detail = detail


class _Client:
    """GET requests with http.client: no redirects followed, socket timeouts per read, and a watchdog
    that shuts the connection at the fetch's deadline (a server trickling a byte per read timeout
    would otherwise hold a read, or a header line, open far past it)."""

    def __init__(self, base_url: str, timeout: float, deadline: float):
        try:
            split = urllib.parse.urlsplit(base_url)
            ok = split.scheme in ("http", "https") and split.hostname and (split.port or 0) >= 0
        except ValueError:  # e.g. "http://[::1", a port out of range
            ok = False
        if not ok:
            raise FactoryError(f"{base_url[:80]}: not an http:// or https:// URL of a `factory serve` store")
        self.base_url, self.timeout, self.deadline = base_url.rstrip("/"), timeout, time.monotonic() + deadline
        self.expired = False

    def url(self, *parts: str) -> str:
        return "/".join([self.base_url, *(urllib.parse.quote(p, safe="/") for p in parts)])

    def stream(self, url: str, limit: int, sink, missing_ok: bool = False) -> int | None:
        """Write the body of `url` to `sink` (a callable); refuse it past `limit` bytes. None on 404 if missing_ok."""
        parts = urllib.parse.urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        try:
            connection = kind(parts.hostname, parts.port, timeout=self._timeout())  # HTTPS: certificates verified
            connection.connect()
        except (socket.timeout, TimeoutError):
            raise FactoryError(f"{url}: cannot connect (timed out); is `factory serve` running?") from None
        except (OSError, ValueError, HTTPException) as exc:
            raise FactoryError(f"{url}: cannot connect ({getattr(exc, 'strerror', None) or exc}); "
                               "is `factory serve` running?") from None
        watchdog = threading.Timer(self._left(), self._expire, [connection.sock])
        watchdog.daemon = True
        watchdog.start()
        response = None
        try:
            connection.request("GET", urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")))
            response = connection.getresponse()
            if response.status != 200:
                if missing_ok and response.status == 404:
                    return None
                raise FactoryError(f"{url}: HTTP {response.status} {_reason(response)}".rstrip())
            announced = response.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) > limit:
                raise _TooLarge(url, f"the server announces {int(announced)} bytes, more than the {limit} expected")
            total = 0
            while chunk := response.read(min(_CHUNK, limit + 1 - total)):
                total += len(chunk)
                if total > limit:
                    raise _TooLarge(url, f"the server sent more than the {limit} bytes expected")
                sink(chunk)
                self._timeout()
            self._timeout()  # a body cut off by the watchdog is late, not short
            return total
        except (socket.timeout, TimeoutError):
            self._timeout()
            raise FactoryError(f"{url}: no data for {self.timeout:.0f} s (timed out); try again later") from None
        except (OSError, HTTPException) as exc:
            self._timeout()
            raise FactoryError(f"{url}: the transfer broke off ({type(exc).__name__}); try again") from None
        finally:
            watchdog.cancel()
            if response is not None:
                response.close()  # it owns the socket once the server said Connection: close
            connection.close()

    def get(self, url: str, limit: int, missing_ok: bool = False) -> bytes | None:
        parts: list[bytes] = []
        total = self.stream(url, limit, parts.append, missing_ok)
        return None if total is None else b"".join(parts)

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def _timeout(self) -> float:
        if self.expired or self._left() <= 0:
            raise FactoryError(f"{self.base_url}: the fetch took longer than its deadline; try again later")
        return min(self.timeout, self._left())

    def _expire(self, sock: socket.socket) -> None:
        self.expired = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read


def _reason(response) -> str:
    try:
        body = json.loads(response.read(4096))
        return f"({str(body['reason'])[:160]})"
    except Exception:  # any body: the status alone is the message
        return ""


def fetch(base_url: str, model: str, out: Path, *, version: str | None = None, target: str = "tflite",
          quantize: str | None = None, trust_key: Path | None = None, timeout: float = TIMEOUT_S,
          deadline: float = DEADLINE_S) -> dict:
    """Download one artifact (plus labels.txt, manifest.json and its signature) into `out`.

    Returns the artifact's manifest entry with model, version and `signature` (verified with
    key id, "unsigned" or "not checked"). Nothing is written to `out` unless every file
    matches the manifest (and, with `trust_key`, the manifest matches its signature).
    """
    out = Path(out)
    store_lib.check_name("--model", model)
    if version is not None:
        store_lib.check_name("--version", version)
    trusted = signing.load_public_key(trust_key) if trust_key is not None else None
    staging.check_destination(out)
    client = _Client(base_url, timeout, deadline)
    if version is None:
        version = _latest_version(client, model)
    where = f"{model} {version} from {client.base_url}"
    manifest_bytes = client.get(client.url("models", model, version, store_lib.MANIFEST_NAME), store_lib.MANIFEST_LIMIT)
    signature = client.get(client.url("models", model, version, store_lib.SIGNATURE_NAME),
                           signing.SIGNATURE_BYTES, missing_ok=True)
    if trusted is not None:
        signing.check(manifest_bytes, signature, trusted, where)
    manifest = parse_manifest(manifest_bytes, where)
    problem = store_lib.release_name_problem(manifest, model, version, required=trusted is not None)
    if problem:
        raise Damaged(f"{where}: {problem}")
    artifact = _choose(manifest, model, version, target, quantize)
    if "labels.txt" not in manifest["files"]:
        raise Damaged(f"{where}: the manifest lists no labels.txt; refusing it")
    wanted = list(dict.fromkeys([*artifact["files"], "labels.txt"]))
    with staging.staged(out) as folder:
        for relative in wanted:
            _download(client, client.url("models", model, version, relative), folder, relative,
                      manifest["files"][relative])
        (folder / store_lib.MANIFEST_NAME).write_bytes(manifest_bytes)
        if signature is not None:
            (folder / store_lib.SIGNATURE_NAME).write_bytes(signature)
    if trusted is not None:
        state = f"verified by key {signing.key_id(trusted)}"
    else:
        state = "not checked" if signature is not None else "unsigned"
    return {**artifact, "model": model, "version": version, "signature": state}


def _latest_version(client: _Client, model: str) -> str:
    url = client.url("models", model, "latest")
    try:
        version = json.loads(client.get(url, LATEST_LIMIT))["version"]
    except (ValueError, TypeError, KeyError):
        raise FactoryError(f"{url}: not a `factory serve` latest-version answer") from None
    if not isinstance(version, str) or not store_lib.NAME_PATTERN.match(version):
        raise FactoryError(f"{url}: names version {str(version)[:64]!r}, which is not an allowed version name")
    return version


def _choose(manifest: dict, model: str, version: str, target: str, quantize: str | None) -> dict:
    candidates = [a for a in manifest["artifacts"] if a["target"] == target and quantize in (None, a["quantize"])]
    if not candidates:
        offered = ", ".join(f"{a['target']} {a['quantize']}" for a in manifest["artifacts"])
        raise FactoryError(f"{model} version {version} has no {target} {quantize or ''} artifact (it has: {offered})")
    return candidates[0]


def _download(client: _Client, url: str, folder: Path, relative: str, entry: dict) -> None:
    destination = folder.joinpath(*relative.split("/"))
    if folder.resolve() not in destination.resolve().parents:  # parse_manifest already refused this
        raise Damaged(f"{url}: {relative!r} would be written outside --out; refusing it")
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(destination, "xb") as f:
        def sink(chunk: bytes) -> None:
            digest.update(chunk)
            f.write(chunk)

        try:
            size = client.stream(url, entry["bytes"], sink)
        except _TooLarge as exc:
            raise FactoryError(f"{relative} from {url} fails its checksum ({exc.detail} by its manifest): the served "
                               "copy is corrupt or tampered; nothing was written") from None
    if size != entry["bytes"]:
        raise FactoryError(f"{relative} from {url}: {size} bytes, the manifest says {entry['bytes']}; "
                           "the served copy is truncated; nothing was written")
    actual = digest.hexdigest()
    if actual != entry["sha256"]:
        raise FactoryError(
            f"{relative} from {url} fails its checksum (sha256 {actual[:12]}…, manifest says "
            f"{entry['sha256'][:12]}…): the served copy is corrupt or tampered; nothing was written"
        )
