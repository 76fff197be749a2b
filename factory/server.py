"""Serve a store read-only over HTTP (a werkzeug WSGI app under waitress), with the browser demo.

  GET /                                   HTML index: models with links to their demos
  GET /models                             JSON index: models, versions, latest, damaged releases
  GET /models/<model>                     JSON: one model's versions
  GET /models/<model>/latest              JSON: the latest version and its manifest
  GET /models/<model>/<version>/<file>    a file the release's manifest lists, manifest.json,
                                          or manifest.json.sig (the publisher's signature)
  GET /demo/<model>                       the browser demo page for the model's TF.js artifact

Every response carries an ETag (If-None-Match answers 304); release files also carry
X-Checksum-SHA256. Errors are JSON ({"error", "reason"}). Paths are checked at every level
(model, version, file): no '..', no hidden or symlinked component, nothing outside the store,
at most MAX_PATH characters (414). A damaged release answers 503 with its reason and does not
affect the others.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import stat
import threading
from pathlib import Path

from waitress import create_server
from waitress import wasyncore
from werkzeug.exceptions import HTTPException, NotFound, RequestURITooLarge, ServiceUnavailable
from werkzeug.routing import Map, Rule
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from factory import store as store_lib
from targets import registry
from targets.errors import FactoryError

CONTENT_TYPES = {
    ".json": "application/json",
    ".tflite": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".sig": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",  # the demo's tokenizer, an ES module
    ".wasm": "application/wasm",
}
CHECKSUM_HEADER = "X-Checksum-SHA256"
MAX_PATH = 1024  # characters of the request path
DEMO_PAGE = Path(__file__).parent / "demo" / "index.html"
STATIC_FILES = registry.get("tfjs").browser_files  # the TF.js bundle the demo loads: from npm, never a CDN
# waitress: requests are read asynchronously (a slow client holds no thread), a fixed pool of
# threads runs the app, connections idle past channel_timeout are closed, at most
# connection_limit are open at once, and request headers are bounded.
SERVER_SETTINGS = {
    "threads": 8,
    "connection_limit": 200,
    "channel_timeout": 30,
    "cleanup_interval": 5,
    "max_request_header_size": 16_384,
    "max_request_body_size": 65_536,  # GET and HEAD only: anything else is answered 405
    "ident": "edgefactory",
}


class StoreApp:
    """A WSGI application serving one store folder."""

    def __init__(self, store: Path):
        self.store = Path(store).resolve()
        methods = ["GET", "HEAD"]
        self.routes = Map([
            Rule("/", endpoint=self.home, methods=methods),
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
            if len(environ.get("PATH_INFO", "")) > MAX_PATH or len(environ.get("RAW_URI", "")) > MAX_PATH * 3:
                raise RequestURITooLarge(f"paths are at most {MAX_PATH} characters")
            endpoint, args = self.routes.bind_to_environ(environ).match()
            response = endpoint(request, **args)
        except HTTPException as exc:
            response = error_response(exc)
        except Exception:  # never a traceback or a 500 page with details for a client
            response = error_response(ServiceUnavailable("the store could not be read"))
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
            raise ServiceUnavailable(store_lib.latest_problem(self.store, name) or f"{name} has no latest version")
        return self._json(request, {
            "model": name,
            "version": version,
            "base_url": f"/models/{name}/{version}/",
            "manifest": self._release(name, version)[1],
        })

    def _describe(self, name: str) -> dict:
        body = {
            "name": name,
            "latest": store_lib.latest(self.store, name),
            "versions": store_lib.versions(self.store, name),
            "url": f"/models/{name}",
        }
        damaged = {}
        for version in body["versions"]:
            try:
                store_lib.read_release(self.store, name, version)
            except FactoryError as exc:
                damaged[version] = str(exc)
        problem = store_lib.latest_problem(self.store, name)
        return {**body, **({"damaged": damaged} if damaged else {}), **({"latest_problem": problem} if problem else {})}

    def _model_name(self, name: str) -> str:
        if not store_lib.versions(self.store, name):  # also refuses bad names and symlinked folders
            raise NotFound(f"no model {name[:64]!r} in this store")
        return name

    def _release(self, name: str, version: str) -> tuple[bytes, dict]:
        if version not in store_lib.versions(self.store, name):  # plain folder, allowed name
            raise NotFound(f"{name} has no version {version[:64]!r}")
        try:
            return store_lib.read_release(self.store, name, version)
        except FactoryError as exc:
            raise ServiceUnavailable(f"{name} version {version} is damaged: {exc}") from None

    # --- files ------------------------------------------------------------------------------
    def release_file(self, request: Request, name: str, version: str, path: str) -> Response:
        name = self._model_name(name)
        manifest_bytes, manifest = self._release(name, version)
        release = self.store / name / version
        if path == store_lib.MANIFEST_NAME:
            checksum = hashlib.sha256(manifest_bytes).hexdigest()
        elif path == store_lib.SIGNATURE_NAME:
            signature = store_lib.read_signature(release)
            if signature is None:
                raise NotFound(f"{name} version {version} is unsigned")
            checksum = hashlib.sha256(signature).hexdigest()
        elif path in manifest["files"]:
            checksum = manifest["files"][path]["sha256"]
        else:
            raise NotFound(f"{path[:64]!r} is not a file of {name} version {version}")
        file, size, mtime = open_inside(self.store, [name, version, *path.split("/")])
        response = send_file(file, request.environ, mimetype=content_type(Path(path)), etag=checksum)
        response.content_length, response.last_modified = size, mtime
        try:
            response = response.make_conditional(request.environ, accept_ranges=True, complete_length=size)
        except HTTPException:  # 416
            file.close()
            raise
        response.headers[CHECKSUM_HEADER] = checksum
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"  # versions never change
        return response

    def home(self, request: Request) -> Response:
        items = "\n".join(
            f'<li><a href="/demo/{html.escape(m)}">{html.escape(m)}</a> '
            f'(<a href="/models/{html.escape(m)}">versions</a>)</li>'
            for m in store_lib.models(self.store)
        ) or "<li>no models published yet</li>"
        page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>edgefactory store</title>'
                f'</head>\n<body><h1>Models</h1>\n<ul>\n{items}\n</ul>\n'
                f'<p><a href="/models">/models</a> (JSON index)</p></body></html>\n')
        response = Response(page, mimetype="text/html")
        response.add_etag()
        return response.make_conditional(request)

    def demo(self, request: Request, name: str) -> Response:
        name = self._model_name(name)
        page = DEMO_PAGE.read_text().replace("{{MODEL}}", html.escape(name))
        response = Response(page, mimetype="text/html")
        response.add_etag()
        return response.make_conditional(request)

    def static(self, request: Request, filename: str) -> Response:
        path = STATIC_FILES.get(filename)
        if path is None or not path.is_file():
            raise NotFound(f"{filename[:64]}: not bundled (npm ci --prefix targets/js)")
        return send_file(path, request.environ, mimetype=content_type(path), conditional=True)


def error_response(exc: HTTPException) -> Response:
    body = {"error": exc.name, "reason": exc.description}
    response = Response(json.dumps(body) + "\n", status=exc.code, mimetype="application/json")
    if exc.code == 405:
        response.headers["Allow"] = "GET, HEAD"
    response.headers["Cache-Control"] = "no-store"
    return response


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix, "application/octet-stream")


def open_inside(root: Path, parts: list[str]):
    """(binary file, size, mtime) of the regular file root/parts..., opened one component at a time
    relative to its folder without following any symlink: a link swapped in after the checks
    cannot lead outside the store, and a FIFO cannot hold a thread. NotFound otherwise."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            if not part or part.startswith(".") or "\\" in part or "\0" in part:
                raise NotFound()
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                parent, fd = fd, os.open(part, flags, dir_fd=fd)
            except OSError:
                raise NotFound() from None
            os.close(parent)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotFound()
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return file, info.st_size, info.st_mtime


class StoreServer:
    """`factory serve`'s server: start with .serve_forever() (in a thread in tests), stop with
    .shutdown() then .server_close(); .server_port is the bound port (useful with port 0)."""

    def __init__(self, app, host: str, port: int, **settings):
        self._map: dict = {}
        self._server = create_server(app, map=self._map, host=host, port=port, **{**SERVER_SETTINGS, **settings})
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def server_port(self) -> int:
        return int(self._server.effective_port)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=poll_interval, map=self._map, use_poll=True, count=1)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._server.pull_trigger()
        self._stopped.wait()

    def server_close(self) -> None:
        self._server.task_dispatcher.shutdown()
        wasyncore.close_all(self._map)


def serve(store: Path, host: str = "127.0.0.1", port: int = 8000, **settings) -> StoreServer:
    """A waitress server for `store` (call .serve_forever(), .shutdown(), .server_close())."""
    if not Path(store).is_dir():
        raise FactoryError(f"store {store} does not exist; publish a build first (factory build ... --publish {store})")
    try:
        return StoreServer(StoreApp(store), host, port, **settings)
    except OSError as exc:
        raise FactoryError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from None
