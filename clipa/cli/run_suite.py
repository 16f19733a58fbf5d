"""``clipa-run SUITE.yaml [--nproc N ...]``: every pilot of a suite, one after the other, launched as a
recipe would be with the same flags (torchrun on N GPUs for the GPU machine the pilots were planned for).

On one process the pilots train in this process: start-up (imports, the tokenizer, the CPU peak) costs
about as much as a small pilot on a 2-core machine (~30 s), and pilots are meant to be cheap. Each pilot
gets its own run directory, ROOT/NAME, and is resumed like any run (a finished one is skipped), so the
same command again continues an interrupted suite. A demo suite generates its data once, into ROOT/data, and
every pilot reads it: the same images the target run will be trained and judged on.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Optional

from rich.console import Console

from clipa import recipe as recipe_mod
from clipa import rundir
from clipa import suite as suite_mod
from clipa.backends.runstate import resume_command
from clipa.errors import DecodersDied, Interrupted, NoRoom


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children (decode workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _shared_data(rec: recipe_mod.Recipe, root: Path) -> recipe_mod.Recipe:
    """A demo pilot reads the suite's data (generated into ROOT/data on first use)."""
    if rec.dataset.name != "demo" or rec.dataset.train is not None:
        return rec
    from clipa.backends.data import resolve

    return rec.model_copy(update={"dataset": resolve.resolve(rec, root, generate=True)})


def run_suite(path: Path, backend, root: Optional[Path], opts, check, freeze) -> int:
    """Train each pilot of the suite at ``path`` into ROOT/NAME; the first non-zero exit code stops it.

    ``check`` and ``freeze`` are clipa-run's own checks before claiming a run directory and its
    predictions-at-launch, applied to every pilot as to a single recipe."""
    suite = suite_mod.load(path)
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    root = Path(root) if root is not None else rundir.default_run_dir(suite.name)
    recs = [(p, path.parent / p.recipe, recipe_mod.load(path.parent / p.recipe)) for p in suite.pilots]
    for p, rpath, rec in recs:  # every mistake before any pilot starts
        rec.check_predictions(str(rpath))
        if not opts.dry_run:
            check(rec, root / p.name)
    again = resume_command(path, root, backend.name, opts)  # resumes the suite, the pilots after a stopped one too
    t0, c0 = time.monotonic(), _cpu_s()
    for i, (p, rpath, rec) in enumerate(recs):
        run_dir = root / p.name
        if opts.dry_run:
            print(f"{run_dir}: ", end="")
            backend.launch(rpath, rec, run_dir, opts)
            continue
        rec = freeze(_shared_data(rec, root), run_dir)
        console.print(f"pilot {i + 1}/{len(recs)}: {p.name} ({p.scale:.4g}x the target's samples) -> {run_dir}")
        try:
            code = backend.launch(rpath, rec, run_dir, opts)
        except (Interrupted, NoRoom, DecodersDied) as e:
            # resume the suite, not the pilot alone: its data comes from the suite
            e.args = (f"{str(e).rsplit('resume with: ', 1)[0]}resume the suite with: {again}",)
            raise
        if code:  # from torchrun (--nproc): its workers said how to resume the pilot alone, not the suite
            if code != 2:
                console.print(f"suite {suite.name}: pilot {i + 1}/{len(recs)} stopped (exit {code}); resume the "
                              f"suite with: {again}")
            return code
    if not opts.dry_run:
        took = (f"suite {suite.name}: {len(recs)} pilots in {time.monotonic() - t0:.0f} s wall, "
                f"{_cpu_s() - c0:.0f} CPU-s (this process and its workers)")
        done = sum((root / p.name / rundir.ACHIEVED).exists() for p, _, _ in recs)
        if done < len(recs):  # --max-samples stopped them: the calibration needs finished pilots
            console.print(f"{took}; {done} of {len(recs)} finished: run the same command again without "
                          "--max-samples to finish them")
        else:
            console.print(f"{took}. Calibrate with:\n  clipa-report --calibrate "
                          + " ".join(str(root / p.name) for p, _, _ in recs))
    return 0
