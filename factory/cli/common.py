"""What every command shares: the app, the console, option types and the one error handler."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from targets.errors import FactoryError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Edge model factory: transfer-learn, convert, verify.")
console = Console(width=None if sys.stdout.isatty() else 120)  # logs: no wrapped table cells

Debug = Annotated[bool, typer.Option(help="Show tracebacks.")]


def one_line_errors(command):
    """Report a FactoryError as one red line and exit code 2 (the traceback only with --debug)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FactoryError as exc:
            if kwargs.get("debug"):
                raise
            Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return run


def size_text(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.1f} kB"
