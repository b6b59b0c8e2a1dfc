"""Where the commands write: rich's console, plain stdout, one JSON object; the ``--json`` flag.

One place for both, so that every command's ``--json`` reads and behaves the same.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from footprint.cli._errors import StdoutClosed

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")]
"""The ``--json`` flag, as ``as_json: JsonOption = False``."""

Result = TypeVar("Result")


class _Console(Console):
    """rich's console, with a closed stdout reported to the app (rich exits 1)."""

    def on_broken_pipe(self) -> None:
        raise StdoutClosed()


console = _Console()


def write(text: str) -> None:
    """Write to stdout; a closed pipe ends the command (see :class:`StdoutClosed`)."""
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise StdoutClosed() from None


def print_json(data: Any) -> None:
    """``data`` as one indented JSON object on stdout."""
    write(json.dumps(data, indent=2, default=str) + "\n")


def show(result: Result, as_json: bool, text: Callable[[Result], None]) -> None:
    """``result`` as JSON with ``--json``, else as the lines ``text`` prints for people."""
    if as_json:
        print_json(result)
    else:
        text(result)
