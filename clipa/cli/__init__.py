"""Console entry points: clipa-plan, clipa-run, clipa-report, clipa-export.

Each command's module (typer, rich, numpy and the rest: about half a second) is imported inside its
entry point, so a Ctrl-C while Python is still importing exits 130 with one line, as it does later on,
instead of a traceback from the middle of an import (or none at all: see ``_command``).
"""
import importlib
import signal
import sys


def _command(module: str):
    def main() -> None:
        # A Ctrl-C during the import is noted and acted on once it is done: raised in the middle of it, the
        # KeyboardInterrupt can land in one of importlib's weakref callbacks, where Python prints it as
        # "Exception ignored" and carries on (a fresh-clone CI run saw clipa-run then finish with rc 0).
        got: list[int] = []
        old = signal.getsignal(signal.SIGINT)
        if old is not signal.SIG_IGN:  # started in the background with Ctrl-C ignored: it stays ignored
            signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
        try:
            run = importlib.import_module(module).main
        except KeyboardInterrupt:  # Ctrl-C before the handler above was in place
            got.append(signal.SIGINT)
        finally:
            signal.signal(signal.SIGINT, old)
        if got:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        run()

    return main


plan_main = _command("clipa.cli.plan")
run_main = _command("clipa.cli.run")
report_main = _command("clipa.cli.report")
export_main = _command("clipa.cli.export")
