"""The clipa-run command that trains a recipe, or a pilot suite, on the hardware it was planned for.

clipa-plan ends with it and writes it into a suite's header, so that what a plan says is what launches:
every GPU of the machine (``--nproc``), or the JAX backend on every worker of a TPU slice, whose hosts
need a run directory they all see. Words in capitals are the user's to fill in.
"""
from __future__ import annotations

import shlex

from clipa.costmodels import hardware


def multi_host_tpu(hardware_name: str) -> bool:
    """A TPU slice of several hosts (an unknown host count counts as several: the safe side)."""
    return hardware_name.startswith("tpu-") and (hardware.tpu_hosts(hardware_name) or 2) > 1


def launch_command(path, hardware_name: str, name: str, suite: bool = False) -> str:
    """``clipa-run PATH`` with the launch flags of ``hardware_name``; ``name`` names the run directory
    of a multi-host TPU run. A ``suite`` runs its pilots one after the other from one host: on a TPU, on
    the TPU VM itself (a multi-host slice launches each pilot recipe with the command for a recipe)."""
    hw, extra = hardware.get(hardware_name), []
    if hw.name.startswith("tpu-"):
        extra = ["--backend", "jax"]
        if not suite:
            extra += ["--tpu", "TPU_NAME", "--zone", "ZONE"]
            extra += ["--run-dir", f"gs://BUCKET/{name}"] if multi_host_tpu(hw.name) else []
    elif hw.n_devices > 1:
        extra = ["--nproc", str(hw.n_devices)]
    return shlex.join(["clipa-run", str(path), *extra])
