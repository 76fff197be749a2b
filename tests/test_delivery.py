"""Store, HTTP serving, verified fetch and the browser demo, on a real build."""
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from factory import fetch, pipeline, store
from factory.cli import app
from factory.cli.common import console
from targets.errors import FactoryError
from factory.specs import BackboneSpec, BuildSpec, DataSpec, ExportSpec, TrainingSpec
from factory.server import CHECKSUM_HEADER, serve

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A real EfficientNet-Lite0 build on digits with TFLite and TF.js artifacts."""
    root = tmp_path_factory.mktemp("delivery")
    spec = BuildSpec(data=DataSpec("digits"), out=root / "digits", backbone=BackboneSpec(input_size=32),
                     training=TrainingSpec(epochs=20),
                     export=ExportSpec(targets=("tflite", "tfjs"), latency_runs=0, min_agreement=0.95))
    return pipeline.build(spec)


@pytest.fixture
def served(built, tmp_path):
    root = tmp_path / "store"
    store.publish(built.out, root, "digits")
    server = serve(root, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}", server.server_port
    server.shutdown()
    server.server_close()


def get(port, path, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers=headers or {})  # sent as written: no client-side normalization
    response = connection.getresponse()
    return response.status, response.headers, response.read()  # header names: case-insensitive


def test_publish_is_versioned_and_never_overwrites(built, tmp_path, monkeypatch):
    root = tmp_path / "store"
    assert store.publish(built.out, root, "digits").name == "1"
    assert store.publish(built.out, root, "digits").name == "2"
    assert store.versions(root, "digits") == ["1", "2"] and store.latest(root, "digits") == "2"
    with pytest.raises(FactoryError, match="already published"):
        store.publish(built.out, root, "digits", version="1")
    with pytest.raises(FactoryError, match="not allowed"):
        store.publish(built.out, root, "../escape")
    monkeypatch.setattr(console, "width", 80)  # as a terminal of 80 columns
    result = CliRunner().invoke(app, ["models", str(root)])
    assert result.exit_code == 0 and "digits 2 (latest)" in result.output
    assert max(map(len, result.output.splitlines())) <= 80
    tfjs = next(a for a in built.manifest["artifacts"] if a["target"] == "tfjs")
    assert f"tfjs float32: {tfjs['accuracy']:.3f}, " in result.output  # one artifact per line, not cut


# A publish that blocks at a known point (after its first file is copied, or right after the
# release is renamed into place and before LATEST is written) so the test can kill -9 it there.
BLOCKING_PUBLISH = """
import os, sys, threading
from factory import store
point = sys.argv[3]
owner, name = (store, "_copy_verified") if point == "copy" else (os, "rename")
original = getattr(owner, name)
def blocking(*args):
    original(*args)
    print(point, flush=True)
    threading.Event().wait()
setattr(owner, name, blocking)
store.publish(sys.argv[1], sys.argv[2], "digits")
"""


def kill_publish_at(point, build_dir, root):
    process = subprocess.Popen([sys.executable, "-c", BLOCKING_PUBLISH, str(build_dir), str(root), point],
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline().strip() == point.encode()
    finally:
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    return process.pid


def test_killed_publish_leaves_no_visible_release(built, tmp_path):
    root = tmp_path / "store"
    store.publish(built.out, root, "digits")
    pid = kill_publish_at("copy", built.out, root)  # kill -9 mid-copy
    assert any(p.name.startswith(".") for p in (root / "digits").iterdir())  # the half copy exists...
    assert store.versions(root, "digits") == ["1"] and store.latest(root, "digits") == "1"  # ...but is invisible
    assert store.latest_problem(root, "digits") is None
    result = CliRunner().invoke(app, ["store", "gc", str(root)])
    assert result.exit_code == 0 and f".2.incoming-{pid}-" in result.output and "1 leftover(s) removed" in result.output
    assert sorted(p.name for p in (root / "digits").iterdir()) == ["1", "LATEST"]
    assert store.publish(built.out, root, "digits").name == "2"

    kill_publish_at("rename", built.out, root)  # kill -9 after the rename, before LATEST is written
    assert store.versions(root, "digits") == ["1", "2", "3"] and store.latest(root, "digits") == "2"
    assert "LATEST names 2 but 3 is newer" in store.latest_problem(root, "digits")
    assert [r.problems for r in store.check(root)] == [[], [], []]  # the renamed release is complete
    assert sorted(p.name for p in (root / "digits").iterdir()) == ["1", "2", "3", "LATEST"]  # no partial file
    assert store.publish(built.out, root, "digits").name == "4" and store.latest(root, "digits") == "4"


def test_server_index_etag_and_checksums(served, built):
    root, url, port = served
    status, headers, body = get(port, "/models")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["models"][0] == {"name": "digits", "latest": "1", "versions": ["1"], "url": "/models/digits"}
    status, headers, body = get(port, "/models", {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""
    latest = json.loads(get(port, "/models/digits/latest")[2])
    assert latest["version"] == "1" and latest["manifest"]["data"]["source"] == "digits"
    for relative, entry in latest["manifest"]["files"].items():
        status, headers, body = get(port, f"/models/digits/1/{relative}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == entry["sha256"] == headers[CHECKSUM_HEADER]
        assert get(port, f"/models/digits/1/{relative}", {"If-None-Match": headers["ETag"]})[0] == 304
    assert get(port, "/models/digits/1/model_float32.tflite")[1]["Content-Type"] == "application/octet-stream"
    assert get(port, "/models/digits/1/labels.txt")[1]["Content-Type"].startswith("text/plain")
    assert get(port, "/static/tfjs/tfjs-backend-wasm.wasm")[1]["Content-Type"] == "application/wasm"


def test_no_path_escapes_the_store(served, tmp_path):
    root, url, port = served
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (root / "digits" / "1" / "link.txt").symlink_to(secret)
    for path in [
        "/models/digits/1/../../../secret.txt",
        "/models/digits/1/..%2F..%2F..%2Fsecret.txt",
        "/models/digits/1/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/models/digits/1/%2e%2e%2f%2e%2e%2fLATEST",
        "/models/digits/1//etc/passwd",
        "/models/digits/1/link.txt",
        "/models/digits/..%2F..%2Fsecret.txt/x",
        "/models/..%2Fsecret.txt/1/x",
        "/models/digits/.1.incoming-x/manifest.json",
    ]:
        status, _, body = get(port, path)
        assert status == 404 and b"do not serve" not in body, path
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("PUT", "/models/digits/1/labels.txt", body=b"x")
    assert connection.getresponse().status == 405


def test_fetch_verifies_checksums_and_refuses_tampering(served, tmp_path):
    root, url, port = served
    out = tmp_path / "app"
    entry = fetch.fetch(url, "digits", out, target="tflite")
    assert entry["version"] == "1" and (out / "model_float32.tflite").is_file()
    assert (out / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    tfjs_out = tmp_path / "web"
    result = CliRunner().invoke(app, ["fetch", url, "--model", "digits", "--target", "tfjs", "--out", str(tfjs_out)])
    assert result.exit_code == 0 and (tfjs_out / "tfjs_float32" / "model.json").is_file()

    with open(root / "digits" / "1" / "model_float32.tflite", "ab") as f:
        f.write(b"\0")  # tamper with the served copy
    tampered_out = tmp_path / "tampered"
    result = CliRunner().invoke(app, ["fetch", url, "--model", "digits", "--out", str(tampered_out)])
    assert result.exit_code == 2
    assert "model_float32.tflite" in result.output and "fails its checksum" in result.output
    assert not tampered_out.exists()
    result = CliRunner().invoke(app, ["fetch", url, "--model", "nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "HTTP 404" in result.output


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian chromium is not installed")
@pytest.mark.parametrize("backend", ["auto", "wasm"])
def test_browser_demo_predicts_like_keras(served, built, tmp_path, backend):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    root, url, port = served
    test = built.prepared.data.test
    images = test.load_images()
    probs = built.trained.model.predict(images, verbose=0)
    index = int(np.argmax(probs.max(1)))  # a confident image: backends may differ on near-ties
    expected = built.prepared.data.class_names[int(probs[index].argmax())]
    image_path = tmp_path / "digit.png"
    Image.fromarray(images[index]).save(image_path)
    screenshot = Path(os.environ.get("DEMO_SCREENSHOT_DIR", tmp_path)) / f"demo-{backend}.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM or "/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        page = browser.new_page()
        query = "" if backend == "auto" else f"?backend={backend}"
        page.goto(f"{url}/demo/digits{query}")
        page.wait_for_selector("#status[data-ready='1']", timeout=120_000)
        chosen = page.inner_text("#backend")
        page.set_input_files("#file", str(image_path))
        page.wait_for_selector("#top1", timeout=120_000)
        shown = page.get_attribute("#top1", "data-label")
        meta = page.inner_text("#meta")
        preview_width = page.eval_on_selector("#preview", "img => img.getBoundingClientRect().width")
        page.screenshot(path=str(screenshot), full_page=True)
        if backend == "auto":  # a frame from the (fake) camera is classified too
            page.click("#camera")
            page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=60_000)
            before = page.get_attribute("#preview", "src")
            page.click("#snap")
            page.wait_for_function(f"document.getElementById('preview').src !== {json.dumps(before)}",
                                   timeout=60_000)
            assert page.get_attribute("#top1", "data-label") in built.prepared.data.class_names
        browser.close()
    assert shown == expected
    assert "inference" in meta and (backend == "auto" or f"on {backend}" in meta)
    assert preview_width >= 200  # a 32-px digit shown at a readable size
    if backend == "auto":  # measured, and a WebGL rendered in software (no GPU here) is not used
        assert "wasm" in chosen and "the fastest measured per image" in chosen and "on webgl" not in meta
    else:
        assert chosen == f"backend {backend}: asked for in the address"
    assert screenshot.stat().st_size > 0
