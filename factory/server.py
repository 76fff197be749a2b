"""Serve a store read-only over HTTP (werkzeug WSGI), with the browser demo.

  GET /models                             JSON index: models, versions, latest
  GET /models/<model>                     JSON: one model's versions
  GET /models/<model>/latest              JSON: the latest version and its manifest
  GET /models/<model>/<version>/<file>    a release file (manifest.json, artifacts, labels.txt)
  GET /demo/<model>                       the browser demo page for the model's TF.js artifact

Every response carries an ETag (If-None-Match answers 304); release files also carry
X-Checksum-SHA256. Paths are checked: no '..', no hidden or symlinked component, nothing
outside the store.
"""
from __future__ import annotations

import json
from pathlib import Path

from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.security import safe_join
from werkzeug.serving import make_server
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from factory import manifest as manifest_lib, store as store_lib

CONTENT_TYPES = {
    ".json": "application/json",
    ".tflite": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
}
CHECKSUM_HEADER = "X-Checksum-SHA256"
DEMO_PAGE = Path(__file__).parent / "demo" / "index.html"
_JS = Path(__file__).resolve().parent.parent / "targets" / "js" / "node_modules" / "@tensorflow"
STATIC_FILES = {  # the TF.js bundle the demo loads: from npm, never a CDN
    "tf.min.js": _JS / "tfjs" / "dist" / "tf.min.js",
    "tf-backend-wasm.min.js": _JS / "tfjs-backend-wasm" / "dist" / "tf-backend-wasm.min.js",
    "tfjs-backend-wasm.wasm": _JS / "tfjs-backend-wasm" / "dist" / "tfjs-backend-wasm.wasm",
    "tfjs-backend-wasm-simd.wasm": _JS / "tfjs-backend-wasm" / "dist" / "tfjs-backend-wasm-simd.wasm",
    "tfjs-backend-wasm-threaded-simd.wasm": _JS / "tfjs-backend-wasm" / "dist" / "tfjs-backend-wasm-threaded-simd.wasm",
}


class StoreApp:
    """A WSGI application serving one store folder."""

    def __init__(self, store: Path):
        self.store = Path(store).resolve()
        methods = ["GET", "HEAD"]
        self.routes = Map([
            Rule("/models", endpoint=self.index, methods=methods),
            Rule("/models/<name>", endpoint=self.model, methods=methods),
            Rule("/models/<name>/latest", endpoint=self.latest, methods=methods),
            Rule("/models/<name>/<version>/<path:path>", endpoint=self.release_file, methods=methods),
            Rule("/demo/<name>", endpoint=self.demo, methods=methods),
            Rule("/static/tfjs/<filename>", endpoint=self.static, methods=methods),
        ], strict_slashes=False, merge_slashes=False)

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            endpoint, args = self.routes.bind_to_environ(environ).match()
            response = endpoint(request, **args)
        except HTTPException as exc:
            response = exc.get_response(environ)
        return response(environ, start_response)

    # --- JSON -------------------------------------------------------------------------------
    def _json(self, request: Request, body) -> Response:
        response = Response(json.dumps(body, indent=2) + "\n", mimetype="application/json")
        response.add_etag()
        response.headers["Cache-Control"] = "no-cache"  # always revalidate: cheap with ETag
        return response.make_conditional(request)

    def index(self, request: Request) -> Response:
        return self._json(request, {"models": [self._describe(name) for name in store_lib.models(self.store)]})

    def model(self, request: Request, name: str) -> Response:
        return self._json(request, self._describe(self._model_name(name)))

    def latest(self, request: Request, name: str) -> Response:
        name = self._model_name(name)
        version = store_lib.latest(self.store, name)
        if version is None:
            raise NotFound(f"{name} has no published version")
        return self._json(request, {
            "model": name,
            "version": version,
            "base_url": f"/models/{name}/{version}/",
            "manifest": manifest_lib.read(self.store / name / version),
        })

    def _describe(self, name: str) -> dict:
        return {
            "name": name,
            "latest": store_lib.latest(self.store, name),
            "versions": store_lib.versions(self.store, name),
            "url": f"/models/{name}",
        }

    def _model_name(self, name: str) -> str:
        if not store_lib.NAME_PATTERN.match(name) or not store_lib.versions(self.store, name):
            raise NotFound(f"no model {name!r} in this store")
        return name

    # --- files ------------------------------------------------------------------------------
    def release_file(self, request: Request, name: str, version: str, path: str) -> Response:
        name = self._model_name(name)
        if not store_lib.NAME_PATTERN.match(version):
            raise NotFound()
        release = self.store / name / version
        file_path = safe_path(release, path)
        checksum = self._checksum(release, path, file_path)
        response = send_file(file_path, request.environ, mimetype=content_type(file_path), etag=checksum,
                             conditional=True)
        response.headers[CHECKSUM_HEADER] = checksum
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"  # versions never change
        return response

    @staticmethod
    def _checksum(release: Path, relative: str, file_path: Path) -> str:
        if relative != manifest_lib.MANIFEST_NAME:
            entry = manifest_lib.read(release)["files"].get(relative)
            if entry:
                return entry["sha256"]
        return manifest_lib.sha256(file_path)

    def demo(self, request: Request, name: str) -> Response:
        name = self._model_name(name)
        page = DEMO_PAGE.read_text().replace("{{MODEL}}", name)
        response = Response(page, mimetype="text/html")
        response.add_etag()
        return response.make_conditional(request)

    def static(self, request: Request, filename: str) -> Response:
        path = STATIC_FILES.get(filename)
        if path is None or not path.is_file():
            raise NotFound(f"{filename}: not bundled (npm ci --prefix targets/js)")
        return send_file(path, request.environ, mimetype=content_type(path), conditional=True)


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix, "application/octet-stream")


def safe_path(root: Path, relative: str) -> Path:
    """`root/relative` if it is a regular file inside root reached without hidden parts or symlinks."""
    joined = safe_join(str(root), relative)
    if joined is None:
        raise NotFound()
    path = Path(joined)
    parts = path.relative_to(root).parts
    current = root
    for part in parts:
        current = current / part
        if part.startswith(".") or current.is_symlink():
            raise NotFound()
    if not path.is_file() or root.resolve() not in path.resolve().parents:
        raise NotFound()
    return path


def serve(store: Path, host: str = "127.0.0.1", port: int = 8000):
    """A threaded WSGI server for `store` (call .serve_forever(), .shutdown())."""
    if not Path(store).is_dir():
        from targets.errors import FactoryError

        raise FactoryError(f"store {store} does not exist; publish a build first (factory build ... --publish {store})")
    return make_server(host, port, StoreApp(store), threaded=True)
