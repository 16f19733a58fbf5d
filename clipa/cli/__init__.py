"""Console entry points: clipa-plan, clipa-run, clipa-report, clipa-export.

Each command's module (typer, rich, numpy and the rest: about half a second) is imported inside its
entry point, so a Ctrl-C while Python is still importing exits 130 with one line, as it does later on,
instead of a traceback from the middle of an import.
"""
import importlib
import sys


def _command(module: str):
    def main() -> None:
        try:
            run = importlib.import_module(module).main
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        run()

    return main


plan_main = _command("clipa.cli.plan")
run_main = _command("clipa.cli.run")
report_main = _command("clipa.cli.report")
export_main = _command("clipa.cli.export")
