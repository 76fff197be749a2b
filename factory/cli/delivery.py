"""Delivery commands: list and check a store, clean its leftovers, sign, serve, fetch."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from factory.cli.common import Debug, app, console, one_line_errors, size_text

keys_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Release signing keys (Ed25519).")
store_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Check a store's releases and clean up after killed processes.")
app.add_typer(keys_app, name="keys")
app.add_typer(store_app, name="store")

TrustKey = typer.Option(None, "--trust-key", help="Public key (.pub of `factory keys new`): refuse releases it did "
                                                   "not sign.")


def _warn(text: str) -> None:
    console.print(Text("warning: ", style="yellow") + Text(text), highlight=False, soft_wrap=True)


@app.command("models")
@one_line_errors
def list_models(store: Path = typer.Argument(..., help="Store folder."), debug: Debug = False):
    """List the models in STORE: versions, targets, accuracy and size; damaged releases say why."""
    from factory import store as store_lib

    rows = store_lib.summary(store)
    if not rows:
        console.print(f"no models in {store}")
        return
    table = Table(title=str(store))
    for column in ("model / version", "backbone / strategy", "keras", "artifacts: accuracy, size"):
        table.add_column(column)
    for row in rows:
        name = f"{row['model']} {row['version']}" + (" (latest)" if row["latest"] else "")
        if row["damaged"]:
            table.add_row(Text(name), Text("damaged (see below)", style="red"), "", "")
            continue
        artifacts = "\n".join(f"{a['target']} {a['quantize']}: {_accuracy(a['accuracy'])}, {size_text(a['bytes'])}"
                              for a in row["artifacts"])
        made = row["created"][:10] + (", signed" if row["signed"] else "")
        table.add_row(Text(f"{name}\n{made}"), Text(f"{row['backbone']}\n{row['strategy']}"),
                      _accuracy(row["keras_accuracy"]), Text(artifacts))
    console.print(table)
    for row in rows:
        if row["damaged"]:
            _damaged(f"{row['model']} {row['version']}", [row["damaged"]])
    for model in sorted({row["model"] for row in rows}):
        problem = store_lib.latest_problem(store, model)
        if problem:
            _warn(problem)


def _damaged(name: str, reasons: list[str]) -> None:
    """One line: `damaged NAME: reason; reason` (reasons that start with the name lose it)."""
    text = "; ".join(r.removeprefix(f"{name}: ") for r in reasons)
    console.print(Text("damaged ", style="red") + Text(f"{name}: {text}"), highlight=False, soft_wrap=True)


def _accuracy(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


@keys_app.command("new")
@one_line_errors
def keys_new(
    out: Path = typer.Option(..., help="Folder for NAME.key (private, mode 0600) and NAME.pub."),
    name: str = typer.Option("release", help="File name stem of the key pair."),
    debug: Debug = False,
):
    """Make an Ed25519 key pair for signing releases (never overwrites a key)."""
    from factory import signing, store as store_lib

    store_lib.check_name("--name", name)
    private_path, public_path = signing.new_key_pair(out, name)
    public = signing.load_public_key(public_path)
    console.print(f"private key: {private_path} (mode 0600: keep it secret, pass it to --sign-key)")
    console.print(f"public key:  {public_path} (give it to `factory fetch --trust-key`)")
    console.print(f"key id {signing.key_id(public)}; raw key for apps to pin (base64): {signing.raw_key_base64(public)}")


@store_app.command("check")
@one_line_errors
def store_check(
    store: Path = typer.Argument(..., help="Store folder."),
    trust_key: Optional[Path] = TrustKey,
    debug: Debug = False,
):
    """Verify every release's files against its manifest (and signature): exit 1 if any is damaged."""
    from factory import signing, store as store_lib
    from targets.errors import FactoryError

    trusted = signing.load_public_key(trust_key) if trust_key is not None else None
    if not store_lib.is_plain_dir(store):
        raise FactoryError(f"store {store} does not exist or is not a folder")
    results = store_lib.check(store, trusted)
    for result in results:
        name = f"{result.model} {result.version}"
        if result.problems:
            _damaged(name, result.problems)
        else:
            console.print(Text(f"ok      {name} (signature {result.signature})"), highlight=False)
    broken_latest = 0
    for model in store_lib.models(store):
        problem = store_lib.latest_problem(store, model)
        if problem and store_lib.latest(store, model) is None:  # /latest cannot answer
            console.print(Text("damaged ", style="red") + Text(problem), highlight=False, soft_wrap=True)
            broken_latest += 1
        elif problem:
            _warn(problem)
    damaged = sum(bool(r.problems) for r in results)
    console.print(f"{len(results)} release(s) checked, {damaged} damaged" +
                  (f", {broken_latest} LATEST file(s) broken" if broken_latest else ""))
    if damaged or broken_latest:
        raise typer.Exit(1)


@store_app.command("gc")
@one_line_errors
def store_gc(
    store: Path = typer.Argument(..., help="Store folder: removes leftovers of killed publishes."),
    builds: List[Path] = typer.Option([], "--builds", help="Also clean this folder holding build --out folders: "
                                                         "staging leftovers and abandoned checkpoints (repeatable)."),
    debug: Debug = False,
):
    """Remove leftovers of killed publishes (and builds, with --builds) that no live process owns."""
    from factory import staging, store as store_lib
    from targets.errors import FactoryError

    removed, kept = store_lib.gc(store)
    for folder in builds:
        if not store_lib.is_plain_dir(folder):
            raise FactoryError(f"--builds {folder} is not a folder")
        more_removed, more_kept = store_lib.clean(staging.leftovers(folder, checkpoints=True))
        removed, kept = removed + more_removed, kept + more_kept
    for item in removed:
        console.print(Text(f"removed {item.path} ({item.kind}; {item.why})"), highlight=False, soft_wrap=True)
    for item in kept:
        console.print(Text(f"kept    {item.path} ({item.kind}; {item.why})"), highlight=False, soft_wrap=True)
    console.print(f"{len(removed)} leftover(s) removed, {len(kept)} kept")


@app.command()
@one_line_errors
def serve(
    store: Path = typer.Argument(..., help="Store folder to serve read-only."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    debug: Debug = False,
):
    """Serve STORE over HTTP: / index, /models JSON, release files with checksums, /demo/<model>."""
    from factory.server import serve as make_server

    server = make_server(store, host, port)
    console.print(f"serving {store} at http://{host}:{server.server_port}/ (JSON: /models, demo: /demo/<model>)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
@one_line_errors
def fetch(
    url: str = typer.Argument(..., help="Base URL of a `factory serve` store, e.g. http://127.0.0.1:8000"),
    model: str = typer.Option(..., help="Model name in the store."),
    out: Path = typer.Option(..., help="Folder to write the artifact, labels.txt and manifest.json into."),
    version: Optional[str] = typer.Option(None, help="Version (default: latest)."),
    target: str = typer.Option("tflite", help="tflite or tfjs."),
    quantize: Optional[str] = typer.Option(None, help="Which quantization (default: the first one published)."),
    trust_key: Optional[Path] = TrustKey,
    timeout: float = typer.Option(30.0, help="Seconds to wait to connect and for each read."),
    debug: Debug = False,
):
    """Download a published artifact and verify every file's sha256 (and, with --trust-key, the signature)."""
    from factory.fetch import fetch as fetch_artifact

    entry = fetch_artifact(url, model, out, version=version, target=target, quantize=quantize, trust_key=trust_key,
                           timeout=timeout)
    console.print(f"fetched {model} {entry['version']} {entry['target']} {entry['quantize']} -> {out} "
                  f"(sha256 verified; signature {entry['signature']})", highlight=False, soft_wrap=True)
    if entry["signature"] == "unsigned":
        _warn("this release is unsigned: nothing ties it to its publisher (publish with --sign-key)")
    elif entry["signature"] == "not checked":
        _warn("the release is signed but the signature was not checked (pass --trust-key PUBFILE)")
