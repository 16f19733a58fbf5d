"""What every clipa command shares: one-line errors for user mistakes, exit code 2."""
from __future__ import annotations

import sys
from typing import Callable

import typer
from rich.console import Console

from clipa.errors import UserError

err_console = Console(stderr=True, highlight=False)


def run_app(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run a Typer app; a UserError becomes one red line on stderr and exit 2, never a traceback."""
    try:
        app(args=argv, standalone_mode=False, prog_name=app.info.name)
    except UserError as e:
        err_console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted; the run directory keeps the last checkpoint")
        return 130
    except Exception as e:  # click's usage errors carry their own exit code and message
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


def entry(app: typer.Typer) -> Callable[[], None]:
    def main() -> None:
        sys.exit(run_app(app))

    return main
