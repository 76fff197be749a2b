"""The `factory` command line. Each module registers its commands on the one app:
build.py (build, backbones, targets, advise, inspect), bench.py (bench, pick), delivery.py
(models, serve, fetch, keys, store), cache.py (cache info|prune)."""
from __future__ import annotations

import sys

from rich.console import Console

from factory.cli import bench, build, cache, delivery  # noqa: F401  (each registers its commands on `app`)
from factory.cli.common import app

__all__ = ["app", "main"]


def main():  # console script entry point
    try:
        app()
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]")
        sys.exit(130)
