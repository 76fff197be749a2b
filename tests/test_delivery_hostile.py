"""Delivery under attack: hostile servers and manifests, tampered releases, symlinks, slow clients,
damaged stores, leftovers of killed processes. Real HTTP on 127.0.0.1, real Ed25519 keys;
builds are small synthetic ones (no training), so the whole file runs in seconds."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from typer.testing import CliRunner

from factory import manifest as manifest_lib, signing, staging, store
from factory.release_manifest import parse as parse_manifest
from factory.cli import app
from factory.server import serve
from targets.errors import FactoryError

TFLITE = b"TFL3" + bytes(range(256)) * 20


def fake_build(folder: Path, tflite: bytes = TFLITE) -> Path:
    """A finished build's layout and manifest, without training: enough to publish, serve and fetch."""
    (folder / "tfjs_float32").mkdir(parents=True)
    (folder / "model_float32.tflite").write_bytes(tflite)
    (folder / "tfjs_float32" / "model.json").write_text('{"format": "graph-model"}')
    (folder / "tfjs_float32" / "group1-shard1of1.bin").write_bytes(b"\1" * 300)
    (folder / "labels.txt").write_text("cat\ndog\n")
    manifest_lib.write(folder, {
        "backbone": {"name": "fake"}, "strategy": {"name": "none"}, "metrics": {"keras_test_accuracy": 0.5},
        "artifacts": [
            {"target": "tflite", "quantize": "float32", "files": ["model_float32.tflite"], "accuracy": 0.5},
            {"target": "tfjs", "quantize": "float32", "accuracy": 0.5,
             "files": ["tfjs_float32/model.json", "tfjs_float32/group1-shard1of1.bin"]},
        ],
    })
    return folder


@pytest.fixture
def build(tmp_path):
    return fake_build(tmp_path / "build")


@pytest.fixture
def keys(tmp_path):
    return signing.new_key_pair(tmp_path / "keys")


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(result, *needles) -> str:
    """The CLI failed with exit code 2 and exactly one line, an error naming every needle."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@contextlib.contextmanager
def running(root: Path, **settings):
    server = serve(root, port=0, **settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def get(port, path, method="GET"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path)
    response = connection.getresponse()
    return response.status, response.headers, response.read()  # header names: case-insensitive


# --- a hostile server -------------------------------------------------------------------------
class Hostile(http.server.ThreadingHTTPServer):
    """Serves `routes` (path -> handler function); any other path under the release gets b"evil"."""
    daemon_threads = True

    def __init__(self, routes: dict):
        self.routes, self.sent = routes, {}
        super().__init__(("127.0.0.1", 0), _HostileHandler)

    def handle_error(self, request, client_address):
        """A client that hangs up mid-answer is what these tests provoke; socketserver would print
        its traceback into the output the test reads (a race: only when the reset comes first)."""


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.routes.get(self.path, static(b"evil"))(self)

    def log_message(self, *args):
        pass


def static(body: bytes, status: int = 200, length: int | None = None):
    def handle(handler):
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)
    return handle


def endless(handler):
    """A body without Content-Length that never ends (up to 1 GB); counts what it managed to send."""
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    chunk, sent = b"\0" * 65536, 0
    try:
        while sent < 1 << 30:
            handler.wfile.write(chunk)
            sent += len(chunk)
    except OSError:
        pass
    handler.server.sent[handler.path] = sent


@contextlib.contextmanager
def hostile(routes: dict):
    server = Hostile(routes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def release_routes(files: dict, manifest: bytes | None = None, paths: list | None = None) -> dict:
    """Routes of release m/1 whose manifest lists `files` (path -> bytes) as one tflite artifact."""
    if manifest is None:
        entries = {path: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for path, data in files.items()}
        artifact = paths or [p for p in files if p != "labels.txt"]
        manifest = json.dumps({"files": entries, "artifacts": [
            {"target": "tflite", "quantize": "float32", "files": artifact}]}).encode()
    return {"/models/m/1/manifest.json": static(manifest)}


# --- fetch: hostile manifests write nothing anywhere ------------------------------------------
BAD_PATHS = ["../escaped.txt", "{abs}", "tfjs/../../escaped.txt", "..\\escaped.txt", "C:/escaped.txt",
             "C:escaped.txt", "a\0b.txt", ".app.staging-1-x/escaped.txt", "./escaped.txt", "a//escaped.txt",
             "manifest.json", "manifest.json.sig", "dir/", "%2e%2e/escaped.txt", "x/" * 10 + "escaped.txt",
             "model.tflite\n"]


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_fetch_refuses_paths_outside_the_release_and_writes_nothing(tmp_path, bad):
    bad = bad.replace("{abs}", str(tmp_path / "escaped.txt"))
    out = tmp_path / "sandbox" / "app"
    out.parent.mkdir()
    before = tree(tmp_path)
    with hostile(release_routes({bad: b"evil", "labels.txt": b"a\n"})) as (_, url):
        result = cli("fetch", url, "--model", "m", "--version", "1", "--out", out)
    one_error(result, "not a plain relative name", "refusing it")
    assert tree(tmp_path) == before  # nothing written: not outside --out, not in it, no staging left


@pytest.mark.parametrize("manifest, reason", [
    (b'{"files": {"labels.txt": {"bytes": 1, "sha256": "%s"}, "labels.txt": {"bytes": 2, "sha256": "%s"}}}'
     % (b"0" * 64, b"1" * 64), "duplicate key 'labels.txt'"),
    (json.dumps({"files": {"Model.tflite": {"bytes": 1, "sha256": "0" * 64},
                           "model.tflite": {"bytes": 1, "sha256": "0" * 64}}}).encode(), "the same name ignoring case"),
    (json.dumps({"files": {"a": {"bytes": 1, "sha256": "0" * 64},
                           "a/b": {"bytes": 1, "sha256": "0" * 64}}}).encode(), "which is a file"),
    (json.dumps({"files": {"a": {"bytes": -5, "sha256": "0" * 64}}}).encode(), "needs 'bytes'"),
    (json.dumps({"files": {"a": {"bytes": 1, "sha256": "0" * 64}},
                 "artifacts": [{"target": "tflite", "quantize": "float32", "files": ["../b"]}]}).encode(),
     "not in its file list"),
    (b"[" * 100_000, "nested too deeply"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_fetch_refuses_malformed_manifests(tmp_path, manifest, reason):
    before = tree(tmp_path)
    with hostile(release_routes({}, manifest=manifest)) as (_, url):
        result = cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "app")
    one_error(result, reason)
    assert tree(tmp_path) == before


def test_fetch_cuts_an_endless_body_at_the_manifest_size(tmp_path):
    files = {"model.tflite": b"x" * 1000, "labels.txt": b"a\n"}
    routes = {**release_routes(files), "/models/m/1/model.tflite": endless}
    before = tree(tmp_path)
    with hostile(routes) as (server, url):
        result = cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "app")
        time.sleep(0.5)  # let the handler notice the closed connection
    one_error(result, "model.tflite", "fails its checksum", "more than the 1000 bytes expected")
    assert server.sent["/models/m/1/model.tflite"] < 32 << 20  # cut off, not read to the end
    assert tree(tmp_path) == before


@pytest.mark.parametrize("route, limit_text", [
    ("/models/m/1/model.tflite", "announces 1000000000 bytes, more than the 1000 expected"),
    ("/models/m/1/manifest.json", "more than the 8388608 bytes expected"),
    ("/models/m/latest", "more than the"),
])
def test_fetch_refuses_oversized_answers(tmp_path, route, limit_text):
    files = {"model.tflite": b"x" * 1000, "labels.txt": b"a\n"}
    handler = static(b"x", length=10**9) if route.endswith(".tflite") else endless
    routes = {**release_routes(files), route: handler}
    version = [] if route.endswith("latest") else ["--version", "1"]
    with hostile(routes) as (_, url):
        result = cli("fetch", url, "--model", "m", *version, "--out", tmp_path / "app")
    one_error(result, limit_text)
    assert not (tmp_path / "app").exists() and not list(tmp_path.glob(".app*"))


def test_fetch_refuses_a_short_file(tmp_path):
    files = {"model.tflite": b"x" * 1000, "labels.txt": b"a\n"}
    routes = {**release_routes(files), "/models/m/1/model.tflite": static(b"x" * 10)}
    with hostile(routes) as (_, url):
        result = cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "app")
    one_error(result, "model.tflite", "10 bytes, the manifest says 1000", "truncated")
    assert tree(tmp_path) == set()


def test_fetch_times_out_on_a_silent_server(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) and never answers
    try:
        result = cli("fetch", f"http://127.0.0.1:{listener.getsockname()[1]}", "--model", "m", "--version", "1",
                     "--out", tmp_path / "app", "--timeout", "1")
    finally:
        listener.close()
    one_error(result, "no data for 1 s (timed out)")  # --timeout 1 applied (the default is 30 s)
    assert not (tmp_path / "app").exists()


def test_fetch_refuses_redirects_and_other_schemes(tmp_path):
    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", "file:///etc/passwd")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with hostile({"/models/m/1/manifest.json": redirect}) as (_, url):
        one_error(cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "app"), "HTTP 302")
    for bad in ["file:///etc", "http://", "http://[::1", "http://127.0.0.1:99999"]:
        one_error(cli("fetch", bad, "--model", "m", "--out", tmp_path / "app"), "not an http://")
    one_error(cli("fetch", "http://127.0.0.1:1", "--model", "../m", "--out", tmp_path / "app"), "--model")
    assert tree(tmp_path) == set()


# --- signed releases ------------------------------------------------------------------------------
def test_keys_new_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    result = cli("keys", "new", "--out", tmp_path / "keys")
    assert result.exit_code == 0
    private, public = tmp_path / "keys" / "release.key", tmp_path / "keys" / "release.pub"
    assert private.stat().st_mode & 0o777 == 0o600 and public.stat().st_mode & 0o777 == 0o644
    raw = load_pem_public_key(public.read_bytes()).public_bytes_raw()
    assert signing.raw_key_base64(load_pem_public_key(public.read_bytes())) in result.output and len(raw) == 32
    before = private.read_bytes()
    one_error(cli("keys", "new", "--out", tmp_path / "keys"), "release.key already exists", "never overwritten")
    assert private.read_bytes() == before
    private.chmod(0o644)
    one_error(cli("store", "check", tmp_path, "--trust-key", private), "--trust-key", "not an Ed25519 public key")
    with pytest.raises(FactoryError, match="readable by others; run `chmod 600"):
        store.publish(fake_build(tmp_path / "b"), tmp_path / "store", "m", sign_key=private)
    assert not (tmp_path / "store" / "m" / "1").exists()


def test_signed_release_is_verified_and_tampering_is_refused(tmp_path, build, keys):
    private, public = keys
    other_private, other_public = signing.new_key_pair(tmp_path / "other")
    root = tmp_path / "store"
    release = store.publish(build, root, "m", sign_key=private)
    store.publish(build, root, "m")  # version 2: unsigned
    signature = (release / "manifest.json.sig").read_bytes()
    load_pem_public_key(public.read_bytes()).verify(signature, (release / "manifest.json").read_bytes())  # the documented bytes
    with running(root) as port:
        url = f"http://127.0.0.1:{port}"
        ok = cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "app", "--trust-key", public)
        key_id = signing.key_id(signing.load_public_key(public))
        assert ok.exit_code == 0 and f"signature verified by key {key_id}" in ok.output
        assert (tmp_path / "app" / "manifest.json.sig").read_bytes() == signature
        unchecked = cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "app2")
        assert unchecked.exit_code == 0 and "signature was not checked (pass --trust-key" in unchecked.output
        unsigned = cli("fetch", url, "--model", "m", "--out", tmp_path / "app3")
        assert unsigned.exit_code == 0 and "this release is unsigned" in unsigned.output

        before = tree(tmp_path)
        one_error(cli("fetch", url, "--model", "m", "--out", tmp_path / "x", "--trust-key", public), "m 2", "is unsigned")
        one_error(cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "x", "--trust-key",
                      other_public), "does not match the trusted key")
        tampered = (release / "model_float32.tflite").read_bytes()[::-1]  # change a file, then re-hash the manifest
        (release / "model_float32.tflite").write_bytes(tampered)
        body = json.loads((release / "manifest.json").read_text())
        body["files"]["model_float32.tflite"]["sha256"] = hashlib.sha256(tampered).hexdigest()
        (release / "manifest.json").write_text(json.dumps(body))
        one_error(cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "x", "--trust-key", public),
                  "does not match the trusted key", "tampered")
        (release / "manifest.json.sig").write_bytes(b"short")
        one_error(cli("fetch", url, "--model", "m", "--version", "1", "--out", tmp_path / "x", "--trust-key", public),
                  "5 bytes, not a 64-byte Ed25519 signature")
        assert tree(tmp_path) == before
    checked = cli("store", "check", root, "--trust-key", public)
    assert checked.exit_code == 1 and "damaged m 1" in checked.output and "damaged m 2: m 2 is unsigned" in checked.output
    assert cli("store", "check", root).exit_code == 0  # consistent hashes alone: why releases are signed


# --- the server -----------------------------------------------------------------------------------
def test_symlinks_at_every_level_serve_nothing_from_outside(tmp_path, build):
    outside = tmp_path / "outside"
    secret_build = fake_build(tmp_path / "secret-build", tflite=b"TOP-SECRET" * 10)
    store.publish(secret_build, outside, "evil")
    root = tmp_path / "store"
    store.publish(build, root, "m")
    (root / "evil").symlink_to(outside / "evil")  # a model folder
    (root / "m" / "9").symlink_to(outside / "evil" / "1")  # a version folder
    store.publish(build, root, "m", version="2")
    (root / "m" / "2" / "model_float32.tflite").unlink()
    (root / "m" / "2" / "model_float32.tflite").symlink_to(outside / "evil" / "1" / "model_float32.tflite")  # a file
    (root / "n").mkdir()
    (root / "n" / "1").symlink_to(outside / "evil" / "1")
    with running(root) as port:
        for path in ["/models/evil", "/models/evil/latest", "/models/evil/1/model_float32.tflite",
                     "/models/evil/1/manifest.json", "/models/m/9/model_float32.tflite", "/models/m/9/manifest.json",
                     "/models/m/2/model_float32.tflite", "/models/n/1/model_float32.tflite", "/demo/evil",
                     "/models/n"]:
            status, headers, body = get(port, path)
            assert status == 404 and b"TOP-SECRET" not in body and headers["Content-Type"] == "application/json", path
        index = json.loads(get(port, "/models")[2])
        assert [m["name"] for m in index["models"]] == ["m"] and index["models"][0]["versions"] == ["1", "2"]
        assert b"evil" not in get(port, "/")[2]
    listing = cli("models", root)
    assert listing.exit_code == 0 and "evil" not in listing.output and " 9 " not in listing.output
    checked = cli("store", "check", root)
    assert checked.exit_code == 1 and "model_float32.tflite is a symlink" in checked.output


@pytest.mark.parametrize("path, status", [
    ("/models/" + "a" * 10_000, 414),
    ("/models/m/1/" + "x/" * 3000 + "labels.txt", 414),
    ("/models/m/1/%00", 404),
    ("/models/m/1/labels.txt%00.json", 404),
    ("/models/m/1/..%5c..%5cLATEST", 404),
    ("/models/m/1/%5c..%5cLATEST", 404),
    ("/models/%2e%2e/1/labels.txt", 404),
    ("/models/m/1/%252e%252e/LATEST", 404),
    ("/models/m/%E2%80%AE1/labels.txt", 404),
    ("/models/m/1/.%2e/LATEST", 404),
    ("/models/m/1/tfjs_float32/../labels.txt", 404),
    ("/%ff%fe", 404),
    ("/models/m/1/manifest.json.sig", 404),  # unsigned release
])
def test_long_and_encoded_paths_answer_json_errors_never_500(tmp_path, build, path, status):
    root = tmp_path / "store"
    store.publish(build, root, "m")
    with running(root) as port:
        got, headers, body = get(port, path)
        assert got == status and headers["Content-Type"] == "application/json" and json.loads(body)["reason"]
        assert get(port, "/models/m/1/labels.txt")[0] == 200  # and the server still serves


def test_damaged_releases_are_reported_and_isolated(tmp_path, build):
    root = tmp_path / "store"
    for _ in range(5):
        store.publish(build, root, "m")
    store.publish(build, root, "n")
    (root / "m" / "2" / "manifest.json").write_bytes(b"")  # 0 bytes
    (root / "m" / "3" / "manifest.json").unlink()
    (root / "m" / "3" / "manifest.json").mkdir()  # unreadable as a file
    (root / "m" / "4" / "manifest.json").write_text('{"files": {}}')
    (root / "m" / "5" / "model_float32.tflite").unlink()  # manifest fine, a file gone
    (root / "m" / "LATEST").write_text("7\n")
    listing = cli("models", root)
    assert listing.exit_code == 0 and "Traceback" not in listing.output, listing.output
    lines = listing.output.splitlines()
    for version, reason in [("2", "not valid JSON"), ("3", "is unreadable"), ("4", "lists no files")]:
        assert any(line.startswith(f"damaged m {version}: ") and reason in line for line in lines), listing.output
    assert "LATEST names '7', which is not a published version" in listing.output
    assert any("│ n " in line and "1 (latest)" in line for line in lines)
    with running(root) as port:
        index = json.loads(get(port, "/models")[2])["models"]
        assert set(index[0]["damaged"]) == {"2", "3", "4"} and "damaged" not in index[1]
        status, headers, body = get(port, "/models/m/2/manifest.json")
        assert status == 503 and "m version 2 is damaged" in json.loads(body)["reason"]
        assert get(port, "/models/m/4/labels.txt")[0] == 503
        assert get(port, "/models/m/1/labels.txt")[0] == 200 and get(port, "/models/m/5/labels.txt")[0] == 200
        assert get(port, "/models/m/5/model_float32.tflite")[0] == 404
        status, _, body = get(port, "/models/m/latest")
        assert status == 503 and "LATEST names '7'" in json.loads(body)["reason"]
        assert get(port, "/models/n/latest")[0] == 200
    checked = cli("store", "check", root)
    assert checked.exit_code == 1
    assert "ok      m 1" in checked.output and "damaged m 5: model_float32.tflite is missing" in checked.output
    assert "6 release(s) checked, 4 damaged, 1 LATEST file(s) broken" in checked.output


def test_slow_clients_hold_no_thread_and_idle_ones_are_dropped(tmp_path, build):
    root = tmp_path / "store"
    store.publish(build, root, "m")
    with running(root, channel_timeout=2, cleanup_interval=1) as port:
        get(port, "/models")  # the worker threads exist now
        threads = threading.active_count()
        slow = []
        for _ in range(100):
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(b"GET /models HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            slow.append(connection)
        started = time.monotonic()
        status = get(port, "/models/m/1/labels.txt")[0]
        assert status == 200 and time.monotonic() - started < 2  # served while 100 clients dawdle
        assert threading.active_count() <= threads  # no thread per slow connection
        time.sleep(4)
        for connection in slow:
            connection.settimeout(5)
            try:
                while connection.recv(4096):  # anything the server says, then end of stream
                    pass
            except ConnectionResetError:
                pass  # closed too
            except socket.timeout:
                pytest.fail("an idle connection was still open after channel_timeout")
            connection.close()


def test_index_page_links_to_every_demo(tmp_path, build):
    root = tmp_path / "store"
    store.publish(build, root, "cats")
    store.publish(build, root, "dogs")
    with running(root) as port:
        status, headers, body = get(port, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b'href="/demo/cats"' in body and b'href="/demo/dogs"' in body
        assert get(port, "/", method="HEAD")[0] == 200


# --- publish and the store ------------------------------------------------------------------------
def test_publish_refuses_a_build_that_differs_from_its_manifest(tmp_path, build):
    root = tmp_path / "store"
    (build / "labels.txt").write_text("changed after the build\n")
    with pytest.raises(FactoryError, match="labels.txt differs from its manifest"):
        store.publish(build, root, "m")
    (build / "labels.txt").unlink()
    (build / "labels.txt").symlink_to("/etc/passwd")
    with pytest.raises(FactoryError, match="labels.txt is a symlink"):
        store.publish(build, root, "m")
    assert tree(root) == {"m"}  # no release, no LATEST, no leftover


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_gc_removes_only_leftovers_no_live_process_owns(tmp_path, build):
    root, builds = tmp_path / "store", tmp_path / "builds"
    store.publish(build, root, "m")
    dead, alive = _dead_pid(), os.getpid()
    model = root / "m"
    for name in [f".2.incoming-{dead}-a", f".3.incoming-{alive}-b", ".4.incoming-legacy"]:
        (model / name).mkdir()
        (model / name / "model_float32.tflite").write_bytes(b"\0" * (10 << 20))
    (model / f".LATEST.incoming-{dead}-c").write_text("2\n")
    for name in [f".app.staging-{dead}-d", f".app.previous-{dead}-e", f".web.staging-{alive}-f"]:
        (builds / name).mkdir(parents=True)
    (builds / ".app.checkpoint").mkdir()
    (builds / ".app.checkpoint" / "owner.pid").write_text(f"{dead}\n")
    (builds / ".web.checkpoint").mkdir()  # no owner recorded, just written: a build may be running
    (builds / ".web.checkpoint" / "state.json").write_text("{}")
    (builds / ".old.checkpoint").mkdir()
    (builds / ".old.checkpoint" / "state.json").write_text("{}")
    two_hours_ago = time.time() - 7200
    for path in [builds / ".old.checkpoint" / "state.json", builds / ".old.checkpoint"]:
        os.utime(path, (two_hours_ago, two_hours_ago))
    result = cli("store", "gc", root, "--builds", builds)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in model.iterdir()) == [f".3.incoming-{alive}-b", ".4.incoming-legacy", "1", "LATEST"]
    assert sorted(p.name for p in builds.iterdir()) == [".web.checkpoint", f".web.staging-{alive}-f"]
    assert "6 leftover(s) removed, 4 kept" in result.output
    assert f"process {dead} is gone" in result.output and f"process {alive} is still running" in result.output
    assert "no owner recorded" in result.output and "untouched for 2.0 h" in result.output
    assert [r.problems for r in store.check(root)] == [[]]  # the release itself untouched
    one_error(cli("store", "gc", tmp_path / "nope"), "does not exist")


# --- where fetch writes ---------------------------------------------------------------------------
def test_fetch_never_replaces_a_folder_holding_another_programs_manifest(tmp_path, build):
    root = tmp_path / "store"
    store.publish(build, root, "m")
    public = tmp_path / "webapp" / "public"  # a web app's folder: its PWA manifest.json is not ours
    public.mkdir(parents=True)
    (public / "index.html").write_text("<html>my app</html>")
    (public / "manifest.json").write_text('{"short_name": "App", "icons": []}')
    with running(root) as port:
        url = f"http://127.0.0.1:{port}"
        one_error(cli("fetch", url, "--model", "m", "--target", "tfjs", "--out", public), "another program's manifest.json")
        assert sorted(p.name for p in public.iterdir()) == ["index.html", "manifest.json"]
        assert cli("fetch", url, "--model", "m", "--out", tmp_path / "app").exit_code == 0
        assert cli("fetch", url, "--model", "m", "--out", tmp_path / "app").exit_code == 0  # our own: replaced


def test_fetch_into_the_current_folder_is_one_error_and_leaves_nothing(tmp_path, build, monkeypatch):
    root = tmp_path / "store"
    store.publish(build, root, "m")
    here = tmp_path / "here" / "deeper"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    with running(root) as port:
        for out in [".", "..", here, "/"]:
            one_error(cli("fetch", f"http://127.0.0.1:{port}", "--model", "m", "--out", out), "the current folder")
    assert tree(tmp_path / "here") == {"deeper"}


def test_names_with_a_trailing_newline_are_refused(tmp_path, build):
    with pytest.raises(FactoryError, match="not allowed"):
        store.publish(build, tmp_path / "store", "m\n")
    one_error(cli("fetch", "http://127.0.0.1:1", "--model", "m", "--version", "1\n", "--out", tmp_path / "a"), "--version")
    (tmp_path / "store" / "m" / "1\n").mkdir(parents=True)  # made by hand: not a version
    assert store.versions(tmp_path / "store", "m") == []
    with pytest.raises(FactoryError, match="not a plain relative name"):
        parse_manifest(json.dumps({"files": {"labels.txt\n": {"bytes": 1, "sha256": "0" * 64}}}).encode(), "x")


def test_a_fifo_in_a_release_is_damaged_and_blocks_nothing(tmp_path, build):
    root = tmp_path / "store"
    store.publish(build, root, "m")
    store.publish(build, root, "m")
    store.publish(build, root, "m")
    (root / "m" / "2" / "manifest.json").unlink()
    os.mkfifo(root / "m" / "2" / "manifest.json")  # opening it for reading waits for a writer: forever
    os.mkfifo(root / "m" / "3" / "manifest.json.sig")
    finished = []
    worker = threading.Thread(target=lambda: finished.append(cli("models", root)), daemon=True)
    worker.start()
    worker.join(10)
    assert finished, "factory models hangs on a FIFO manifest.json"
    assert "damaged m 2: " in finished[0].output and "not a regular file" in finished[0].output
    with running(root, threads=2) as port:
        for _ in range(3):  # more requests than threads: none may hang
            status, _, body = get(port, "/models/m/2/labels.txt")
            assert status == 503 and "not a regular file" in json.loads(body)["reason"]
            assert get(port, "/models/m/3/manifest.json.sig")[0] == 503
        assert get(port, "/models/m/1/labels.txt")[0] == 200
    checked = cli("store", "check", root)
    assert checked.exit_code == 1 and "damaged m 3: " in checked.output


def _trickle(prefix: bytes):
    """Sends `prefix`, then one byte every 0.2 s (well inside the read timeout) for 200 s."""
    def handle(handler):
        try:
            handler.wfile.write(prefix)
            for _ in range(1000):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass
    return handle


@pytest.mark.parametrize("prefix", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # a slow body
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",  # a slow body the response owns
    b"HTTP/1.1 200 OK\r\nX-Slow: ",  # a header line that never ends
])
def test_a_trickling_server_is_cut_off_at_the_deadline(tmp_path, prefix):
    from factory.fetch import fetch

    files = {"model.tflite": b"x" * 1000, "labels.txt": b"a\n"}
    routes = {**release_routes(files), "/models/m/1/model.tflite": _trickle(prefix)}
    with hostile(routes) as (_, url):
        started = time.monotonic()
        with pytest.raises(FactoryError, match="took longer than its deadline"):
            fetch(url, "m", tmp_path / "app", version="1", timeout=1, deadline=2)
        assert time.monotonic() - started < 6
    assert tree(tmp_path) == set()


def test_a_symlink_swapped_in_after_the_checks_serves_nothing_from_outside(tmp_path, build, monkeypatch):
    from factory import server as server_lib

    root = tmp_path / "store"
    store.publish(build, root, "m")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET\n")
    labels = root / "m" / "1" / "labels.txt"
    original = server_lib.send_file

    def swap_then_send(*args, **kwargs):  # the race, made deterministic: the checks passed, then the swap
        labels.unlink()
        labels.symlink_to(secret)
        return original(*args, **kwargs)

    monkeypatch.setattr(server_lib, "send_file", swap_then_send)
    with running(root) as port:
        status, _, body = get(port, "/models/m/1/labels.txt")
    assert b"TOP-SECRET" not in body and (status, body) == (200, b"cat\ndog\n")  # the file that was checked


def test_gc_keeps_the_checkpoint_of_a_resumed_build_that_is_still_running(tmp_path):
    builds = tmp_path / "builds"
    checkpoint = builds / ".app.checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "owner.pid").write_text(f"{_dead_pid()}\n")  # the killed build
    (checkpoint / "state.json").write_text("{}")
    time.sleep(2.2)  # process start times are known to about a second
    resumed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (checkpoint / "owner.pid").write_text(f"{resumed.pid}\n")  # record_owner: the file rewritten in place
        removed, kept = store.clean(staging.leftovers(builds, checkpoints=True))
        assert not removed and [k.path for k in kept] == [checkpoint] and checkpoint.is_dir()
    finally:
        resumed.kill()
        resumed.wait()


def test_a_signed_release_served_under_another_name_or_version_is_refused(tmp_path, keys):
    private, public = keys
    root, mirror = tmp_path / "store", tmp_path / "mirror"
    store.publish(fake_build(tmp_path / "cats"), root, "cats", sign_key=private)
    store.publish(fake_build(tmp_path / "cats2", tflite=b"NEWER" * 50), root, "cats", sign_key=private)
    store.publish(fake_build(tmp_path / "dogs", tflite=b"DOGS" * 100), root, "dogs", sign_key=private)
    assert json.loads((root / "cats" / "2" / "manifest.json").read_text())["release"] == {"model": "cats", "version": "2"}
    (mirror / "cats").mkdir(parents=True)
    shutil.copytree(root / "dogs" / "1", mirror / "cats" / "1")  # another model, validly signed by the same key
    shutil.copytree(root / "cats" / "1", mirror / "cats" / "2")  # an older version passed off as the newer one
    with running(mirror) as port:
        for version, named in [("1", "names dogs 1, not cats 1"), ("2", "names cats 1, not cats 2")]:
            one_error(cli("fetch", f"http://127.0.0.1:{port}", "--model", "cats", "--version", version,
                          "--out", tmp_path / "app", "--trust-key", public), named)
    assert not (tmp_path / "app").exists()
    checked = cli("store", "check", mirror, "--trust-key", public)
    assert checked.exit_code == 1 and "names dogs 1, not cats 1" in checked.output
    assert cli("store", "check", root, "--trust-key", public).exit_code == 0
