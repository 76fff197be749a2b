"""`factory cache info|prune`: what the per-image feature cache holds, and making it smaller."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from factory.cli.common import Debug, app, console, one_line_errors, size_text
from factory.specs import CacheSpec
from targets.errors import FactoryError

cache_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="The feature cache: frozen-backbone features, one entry per image.")
app.add_typer(cache_app, name="cache")

CacheDir = typer.Option(None, help="The cache's folder (default: $EDGEFACTORY_CACHE, else ~/.cache/edgefactory).")
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text: str) -> int:
    """'500MB', '2 GB', '1e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?b?)\s*", text.lower())
    size = float(match.group(1)) * UNITS[match.group(2)] if match else 0.0
    if not (1 <= size < 1e18):
        raise FactoryError(f"--max-size {text!r}: give a size such as 500MB or 2GB")
    return int(size)


def _folder(cache_dir: Path | None) -> Path:
    return CacheSpec(folder=cache_dir).features_folder


def _age(timestamp: float) -> str:
    days = (time.time() - timestamp) / 86400
    return "today" if days < 1 else f"{days:.0f} days ago"


@cache_app.command("info")
@one_line_errors
def info(cache_dir: Optional[Path] = CacheDir, debug: Debug = False):
    """List the cached features per backbone and input size, and their size on disk."""
    from factory import backbones, cache

    report = cache.info(_folder(cache_dir))
    if not report["extractors"]:
        console.print(f"the feature cache in {report['folder']} is empty")
        return
    table = Table(title=f"feature cache: {report['folder']}")
    for column in ("backbone", "input", "examples", "features", "last used", "id"):
        table.add_column(column, justify="right" if column in ("input", "examples", "features") else "left")
    for row in report["extractors"]:
        unit = "tokens" if backbones.modality(row["backbone"]) == "text" else "px"
        table.add_row(row["backbone"], f"{row['input_size']} {unit}", f"{row['images']:,}",
                      size_text(row["feature_bytes"]), _age(row["last_used"]), row["extractor"])
    console.print(table)
    scratch = f", {report['scratch_folders']} scratch folder(s)" if report["scratch_folders"] else ""
    console.print(f"{size_text(report['bytes_on_disk'])} on disk in {report['files']} file(s){scratch}")


@cache_app.command("prune")
@one_line_errors
def prune(
    cache_dir: Optional[Path] = CacheDir,
    unused_days: Optional[float] = typer.Option(None, min=0, help="Remove features no build used for this many days."),
    max_size: Optional[str] = typer.Option(None, help="Then remove the least recently used until the features fit "
                                           "in this size (e.g. 2GB)."),
    all_: bool = typer.Option(False, "--all", help="Remove the whole cache."),
    debug: Debug = False,
):
    """Make the feature cache smaller; builds extract whatever they miss again."""
    from factory import cache

    if not (all_ or unused_days is not None or max_size):
        raise FactoryError("say what to remove: --unused-days N, --max-size SIZE or --all")
    limit = parse_size(max_size) if max_size else None
    result = cache.prune(_folder(cache_dir), unused_days=unused_days, max_bytes=limit, everything=all_)
    console.print(f"removed {result['removed_images']:,} image(s), freed {size_text(max(result['freed_bytes'], 0))}; "
                  f"{result['images']:,} image(s), {size_text(result['bytes_on_disk'])} left")
