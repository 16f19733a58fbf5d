"""The Backend protocol and its registry.

A backend trains a recipe into a run directory (see ``clipa.rundir``), resuming from
whatever that directory already holds. Backends are registered by name with the module
that implements them, and imported only when asked for: the planner never pays for
importing torch or jax.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Protocol

from clipa.errors import UserError
from clipa.recipe import Recipe


@dataclass
class LaunchOptions:
    """How to launch: process counts and cluster addresses, never what to train."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: Optional[str] = None
    rdzv_id: Optional[str] = None
    tpu: Optional[str] = None
    zone: Optional[str] = None
    project: Optional[str] = None
    dry_run: bool = False
    device: Optional[str] = None  # "cpu", "cuda"; default: best available
    max_samples: Optional[int] = None  # stop early after this many samples in total (debugging)

    def check_nodes(self) -> None:
        """UserError for a node rank outside the nodes, or several nodes with no address to meet at (each
        would wait for the others at its own localhost)."""
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise UserError(f"--rdzv-endpoint HOST:PORT is required with --nnodes {self.nnodes} (where the "
                            "nodes meet: node 0's address)")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"--node-rank {self.node_rank} must be in [0, {self.nnodes}) (--nnodes {self.nnodes})")


LAUNCH_FLAGS = frozenset(f.name for f in fields(LaunchOptions))


class Backend(Protocol):
    name: str
    flags: frozenset[str]  # the LaunchOptions fields it honours: clipa-run refuses any other one given

    def launch(self, recipe_path: Path, recipe: Recipe, run_dir: Path, opts: LaunchOptions) -> int:
        """Train (or print the launch command with opts.dry_run); return a process exit code."""
        ...


_REGISTRY: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Register ``name`` -> "module:attr" (a Backend class); a duplicate name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"backend {name!r} registered twice")
    _REGISTRY[name] = target


register("torch", "clipa.backends.torch.backend:TorchBackend")
register("jax", "clipa.backends.jax.backend:JaxBackend")


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Backend:
    if name not in _REGISTRY:
        raise UserError(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}")
    module, attr = _REGISTRY[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"backend {name!r} is not available: {e}") from None
    return getattr(mod, attr)()
