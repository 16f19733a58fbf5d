"""clipa-run RECIPE: train a recipe on a backend (PyTorch by default, JAX with --backend jax)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from clipa import recipe as recipe_mod
from clipa import rundir
from clipa.cli._common import entry

app = typer.Typer(name="clipa-run", add_completion=False, help=__doc__)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    backend: str = typer.Option("torch", help="torch | jax"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory (default: runs/<recipe name>); an unfinished one is resumed"),
    nproc: int = typer.Option(1, help="processes (devices) per node; >1 launches torchrun"),
    nnodes: int = typer.Option(1, help="nodes (torchrun)"),
    node_rank: int = typer.Option(0, help="this node's rank (torchrun)"),
    rdzv_endpoint: Optional[str] = typer.Option(None, help="HOST:PORT rendezvous (torchrun, multi-node)"),
    rdzv_id: Optional[str] = typer.Option(None, help="rendezvous id (torchrun)"),
    tpu: Optional[str] = typer.Option(None, help="TPU VM name: run on all its workers (jax)"),
    zone: Optional[str] = typer.Option(None, help="TPU zone (jax)"),
    project: Optional[str] = typer.Option(None, help="cloud project (jax, TPU)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when available)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the launch command and exit"),
    max_samples: Optional[int] = typer.Option(None, help="stop after this many samples in total (debugging)"),
) -> None:
    from clipa import backends

    rec = recipe_mod.load(recipe)
    bk = backends.get(backend)
    opts = backends.LaunchOptions(
        nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id,
        tpu=tpu, zone=zone, project=project, dry_run=dry_run, device=device, max_samples=max_samples,
    )
    code = bk.launch(recipe, rec, run_dir or rundir.default_run_dir(rec.name), opts)
    raise typer.Exit(code)


main = entry(app)

if __name__ == "__main__":
    main()
