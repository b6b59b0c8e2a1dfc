"""The two exceptions a command raises for :func:`footprint.cli.main` to turn into an exit.

Apart from the app, so that every command module can raise them without importing it.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the command line: exit 2 with this one-line message."""


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head``): end quietly with exit 0.

    Not an ``OSError`` on purpose: click (and typer's copy of it) turns a broken pipe
    into exit 1 before :func:`footprint.cli.main` could see it.
    """
