"""What every clipa command shares: one-line errors and the exit codes shells, CI and SLURM rely on.

    0    success                         2    a usage error or a mistake in a flag, file or field (a path
                                              that cannot be read or written too)
    1    a failure that is not the user's (a worker died, a bug: its traceback is printed; a full disk
         under the run directory: one line, errors.NoRoom)
    130  interrupted by Ctrl-C           143  stopped by SIGTERM
    129  the terminal closed (SIGHUP)    (all three after a checkpoint, when training)
"""
from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from clipa import __version__
from clipa.errors import NoRoom, UserError

if TYPE_CHECKING:
    from clipa.recipe import Recipe

err_console = Console(stderr=True, highlight=False)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_app(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run a Typer app and return its exit code; a user mistake is one red line on stderr, never a traceback."""
    prog = app.info.name

    def call() -> int:
        try:
            # Non-standalone: click returns the command's exit code (typer.Exit, Ctrl-C -> 130, --help -> 0)
            # instead of calling sys.exit, and raises usage errors for us to print in one line.
            rv = app(args=argv, standalone_mode=False, prog_name=prog)
        except typer.Abort:
            return 130  # typer turns Ctrl-C at a prompt into Abort
        except typer.TyperException as e:  # typer's own click: unknown option, missing argument, bad value
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            _error(f"{_one_line(message)} (see {prog} --help)")
            return getattr(e, "exit_code", 2)
        return rv if isinstance(rv, int) else 0

    return run_module(call)


def run_module(main: Callable[[], int], interrupted: str = "interrupted") -> int:
    """``main``'s exit code, with the errors every command (and ``python -m`` tool) words the same way: one
    line for a UserError, for a path that cannot be read or written, and for Ctrl-C (``interrupted``, 130)."""
    try:
        return main()
    except UserError as e:
        _error(_one_line(str(e)))
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print(interrupted, soft_wrap=True, markup=False)
        return 130
    except OSError as e:
        if e.filename is None:
            raise
        # A path that cannot be read or written (an --out in /proc, a directory where a file goes, no
        # permission): the user's path or their machine's, never a traceback. A full disk is not a usage error.
        why = e.strerror
        if isinstance(e, FileExistsError) and not os.path.isdir(e.filename):  # mkdir where a file is
            why = "a file where a folder is needed"
        _error(f"{e.filename}: {why}")
        return 1 if e.errno in NoRoom.FULL else 2


def _error(line: str) -> None:
    """``error: LINE`` on stderr, "error:" in red; the line's own brackets (``stages[0]``, a path) are text."""
    err_console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True, markup=True)


def entry(app: typer.Typer) -> Callable[[], None]:
    def main() -> None:
        sys.exit(run_app(app))

    return main


def _print_version(value: bool) -> None:
    if value:
        print(f"clipa {__version__}")
        raise typer.Exit(0)


def version_option():
    """``--version``: print clipa's version and exit (eager, so it works with any other flag)."""
    return typer.Option(False, "--version", callback=_print_version, is_eager=True,
                        help="print clipa's version and exit")


def finite(flag: str, value: Optional[float], positive: bool = True) -> Optional[float]:
    """A number flag that must be finite (and > 0): `--budget nan` or `inf` is a mistake, not a plan."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise UserError(f"{flag}: must be a finite number, got {value}")
    if positive and value <= 0:
        raise UserError(f"{flag}: must be positive, got {value:g}")
    return value


def load_recipe(path) -> "Recipe":
    """A recipe file, validated, naming hardware the cost models know. ``clipa.recipe`` leaves that check
    to its users (it imports no cost model: data flows one way); clipa-run and clipa-plan --predict call this."""
    from clipa import recipe as recipe_mod
    from clipa.costmodels import hardware

    rec = recipe_mod.load(path)
    try:
        hardware.check_name(rec.hardware.name)
    except UserError as e:
        raise UserError(f"{path}: hardware.name: {e}") from None
    return rec


def not_with(flag: str, given: bool, mode: str) -> None:
    """A flag that does not apply to the chosen mode or backend is an error, never silently ignored."""
    if given:
        raise UserError(f"{flag}: does not apply {mode}")
