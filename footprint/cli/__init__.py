"""The ``footprint`` command: a thin layer over the library.

Bad input exits with code 2 and one line on stderr saying why. Ctrl-C exits 130 with one
line on stderr. A reader that closes the pipe early (``footprint regions | head -1``)
ends the command quietly with exit 0.

Here are the app, its commands in the order ``--help`` lists them, and that exit policy;
the commands are in one module per job (info, demo, report, serve, bench, db).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from footprint.cli import bench, db, demo, info, report, serve
from footprint.cli._errors import InputError, StdoutClosed
from footprint.cli._output import write

app = typer.Typer(
    help="What each inference query costs in energy, CO2e and money.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# typer lists the commands in the order they are registered, then the groups.
app.add_typer(bench.bench_app, name="bench")
app.add_typer(db.db_app, name="db")
app.command()(info.devices)
app.command()(demo.demo)
app.command()(info.regions)
app.command()(report.report)
app.command("daemon")(serve.daemon_command)
app.command("proxy")(serve.proxy_command)


def _print_version(value: bool) -> None:
    if value:
        from footprint import __version__

        write(f"footprint {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    pass


def _complain(code: int, message: str) -> int:
    sys.stderr.write(f"footprint: {message}\n")
    return code


def _stdout_closed() -> NoReturn:
    """The reader went away: exit 0, with stdout pointed at devnull first.

    As the Python docs recommend (signal module, "Note on SIGPIPE"): the interpreter
    flushes stdout once more on the way out, and that flush must not fail again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pragma: no cover - stdout with no fd
        pass
    sys.exit(0)


def _is_click_error(exc: BaseException) -> bool:
    """click's ``ClickException`` (usage errors included), or typer's copy of it.

    typer up to 0.25 raises click's own exceptions; from 0.26 on it carries a copy of click
    whose classes have no public name. Both are recognised by class name, so that nothing
    private is imported.
    """
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


def _run(argv: list[str] | None) -> int:
    """Run the app; its exit status (the message, if any, already on stderr)."""
    try:
        status = app(args=argv, standalone_mode=False)
    except InputError as exc:
        return _complain(2, f"error: {exc}")
    except typer.Abort:
        return _complain(130, "aborted")
    except typer.Exit as exc:  # pragma: no cover - typer returns the code when not standalone
        return exc.exit_code
    except SystemExit as exc:
        # click turns a broken pipe it sees first into exit 1: still a closed pipe to us.
        if isinstance(exc.__context__, BrokenPipeError):
            raise StdoutClosed() from None
        raise
    except Exception as exc:
        if not _is_click_error(exc):
            raise
        message = exc.format_message()  # type: ignore[attr-defined]
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `footprint`: help, exit 0
            write(message + "\n")
            return 0
        return _complain(getattr(exc, "exit_code", 2), f"error: {message}")
    if status == 130:  # typer turns KeyboardInterrupt into exit code 130, silently
        return _complain(130, "interrupted")
    return status if isinstance(status, int) else 0


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2, Ctrl-C 130 (one line on stderr each); a closed
    stdout ends quietly with 0."""
    try:
        status = _run(argv)
        try:
            sys.stdout.flush()  # now, not in the interpreter's exit, where it can't be caught
        except BrokenPipeError:
            raise StdoutClosed() from None
    except KeyboardInterrupt:
        status = _complain(130, "interrupted")
    except (StdoutClosed, BrokenPipeError):
        _stdout_closed()
    if status:
        sys.exit(status)
