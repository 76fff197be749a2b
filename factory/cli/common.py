"""What every command shares: the app, the console, option types and the one error handler."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand
from rich.console import Console
from rich.text import Text
from typing_extensions import Annotated

from factory.specs import ADVISOR_COST_SHARE
from targets import registry
from targets.errors import FactoryError

# Plain click help (no rich panels): it wraps cleanly at 80 columns instead of cutting option names.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Edge model factory: transfer-learn, convert, verify.")
console = Console()  # the terminal's width ($COLUMNS), 80 columns when not a terminal

Debug = Annotated[bool, typer.Option(help="Show tracebacks and TensorFlow's own log lines.")]


def grouped_help(groups: dict[str, tuple[str, ...]]) -> type:
    """A command class whose --help lists its options under these headings (parameter names),
    the rest under "Other options"; plain text that wraps at 80 columns."""

    class GroupedCommand(TyperCommand):
        def format_options(self, ctx, formatter):
            records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
            grouped = {name for names in groups.values() for name in names}
            unknown = grouped - set(records)
            if unknown:
                raise AssertionError(f"help groups name no such option: {sorted(unknown)}")
            others = tuple(name for name in records if name not in grouped)
            for title, names in [*groups.items(), ("Other options", others)]:
                rows = [records[name] for name in names if records[name]]
                if rows:
                    with formatter.section(title):
                        formatter.write_dl(rows)

    return GroupedCommand


WRAPPED_FACTORY_ERROR = re.compile(r"FactoryError: ([^\n]+)")


def one_line_errors(command):
    """Report a FactoryError as one red line and exit code 2 (the traceback only with --debug),
    also one raised inside a TensorFlow op (a tf.data decode), which TensorFlow wraps."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        if kwargs.get("debug"):
            os.environ["EDGEFACTORY_DEBUG"] = "1"  # read when TensorFlow is first imported
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, FactoryError):
                message = str(exc)
            else:
                wrapped = type(exc).__module__.startswith("tensorflow") and WRAPPED_FACTORY_ERROR.search(str(exc))
                if not wrapped:
                    raise
                message = wrapped.group(1).strip()
            if kwargs.get("debug"):
                raise
            refuse(message)

    return run


def refuse(message: str):
    """End the command with `message` as one red line on stderr and exit code 2."""
    Console(stderr=True).print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def config_defaults(ctx: typer.Context, path: Optional[Path]) -> Optional[Path]:
    """--config's callback (eager: before the other options): the file's options become the
    command's defaults, so flags on the command line win."""
    if path is None:
        return None
    from factory import recipes

    params = {p.name: p for p in ctx.command.params if p.name != "config"}
    try:
        values = recipes.load(path, set(params))
    except FactoryError as exc:
        refuse(str(exc))
    for name, value in values.items():
        param = params[name]
        if param.multiple and not isinstance(value, list):
            value = [value]
        try:
            param.process_value(ctx, value)  # its type conversion and checks, as for a flag
        except typer.BadParameter as exc:
            refuse(f"--config {path}: {name.replace('_', '-')}: {exc.message}")
        values[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


def modes_help(bench: bool = False) -> str:
    """Each target's quantization modes (its bench modes), from the targets' mode tables."""
    targets = [registry.get(name) for name in registry.names()]
    return "; ".join(f"{t.name}: " + ", ".join(m.name for m in (t.bench_modes() if bench else t.modes))
                     for t in targets)


def size_text(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.1f} kB"


# --- options several commands share (each command chooses its own default) ---------------------
DataOption = Annotated[str, typer.Option(
    metavar="FOLDER|CSV|JSONL|NAME", help="Folder with one sub-folder per class (images, or .txt files), a CSV of "
    "image paths or texts and labels, a JSON Lines file of texts and labels, or a named source: fashion-mnist, "
    "digits (images), debian-packages, debian-summaries (text).")]
BackboneOption = Annotated[str, typer.Option(help="Registry name (see `factory backbones`) or hub:HANDLE_OR_DIR.")]
WeightsOption = Annotated[Optional[Path], typer.Option(help="Local weights file for keras.applications backbones.")]
InputSizeOption = Annotated[Optional[int], typer.Option(help="Square input size in pixels; for a text encoder, tokens "
                                                        "per text (default: the backbone's own).")]
LimitOption = Annotated[Optional[int], typer.Option(help="Use a stratified subset of this many examples (0: all).")]
TextColumnOption = Annotated[str, typer.Option(help="Text data (.csv, .jsonl): the column holding the text.")]
LabelColumnOption = Annotated[str, typer.Option(help="Text data (.csv, .jsonl): the column holding the label.")]
SeedOption = Annotated[int, typer.Option(help="Seed for subsetting, splitting and training.")]
Quiet = Annotated[bool, typer.Option(help="No progress display.")]
BudgetOption = Annotated[Optional[float], typer.Option(
    "--budget-s", help="The advisor's race (--strategy auto): stop its trials after this many seconds (default: "
    f"at {ADVISOR_COST_SHARE:.0%} of the projected time to train every candidate fully).")]


def data_and_backbone(data: str, backbone: str, weights: Path | None, input_size: int | None, limit: int | None,
                      seed: int, **data_options):
    """The DataSpec and BackboneSpec those shared options describe (checked here, before any work)."""
    from factory.data import check_source
    from factory.specs import BackboneSpec, DataSpec

    data_spec = DataSpec(data, limit=limit or None, seed=seed, **data_options)
    check_source(data_spec, backbone)
    return data_spec, BackboneSpec(backbone, input_size, str(weights) if weights else None)
