"""Delivery commands: list a store, serve it over HTTP, fetch a release from it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from factory.cli.common import Debug, app, console, one_line_errors, size_text


@app.command("models")
def list_models(store: Path = typer.Argument(..., help="Store folder.")):
    """List the models in STORE: versions, targets, accuracy and size."""
    from factory import store as store_lib

    rows = store_lib.summary(store)
    if not rows:
        console.print(f"no models in {store}")
        return
    table = Table(title=str(store))
    for column in ("model", "version", "backbone / strategy", "keras acc", "artifacts (accuracy, size)", "created"):
        table.add_column(column)
    for row in rows:
        artifacts = ", ".join(
            f"{a['target']} {a['quantize']} ({a['accuracy']:.3f}, {size_text(a['bytes'])})" for a in row["artifacts"]
        )
        version = row["version"] + (" (latest)" if row["latest"] else "")
        table.add_row(row["model"], version, f"{row['backbone']} / {row['strategy']}",
                      f"{row['keras_accuracy']:.3f}", artifacts, row["created"])
    console.print(table)


@app.command()
@one_line_errors
def serve(
    store: Path = typer.Argument(..., help="Store folder to serve read-only."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    debug: Debug = False,
):
    """Serve STORE over HTTP: /models JSON index, release files with checksums, /demo/<model>."""
    from factory.server import serve as make_server

    server = make_server(store, host, port)
    console.print(f"serving {store} at http://{host}:{server.server_port}/models (demo: /demo/<model>)")
    try:
        server.serve_forever()
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
    debug: Debug = False,
):
    """Download a published artifact and verify every file's sha256 against the manifest."""
    from factory.fetch import fetch as fetch_artifact

    entry = fetch_artifact(url, model, out, version=version, target=target, quantize=quantize)
    console.print(f"fetched {model} {entry['version']} {entry['target']} {entry['quantize']} -> {out} (sha256 verified)")
