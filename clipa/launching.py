"""The clipa-run command that trains a recipe, or a pilot suite, on the hardware it was planned for.

clipa-plan ends with it and writes it into a suite's header, so that what a plan says is what launches:
every GPU of the machine (``--nproc``), every GPU of several machines (a100x32: ``--slurm --nodes 4``), or the
JAX backend on every worker of a TPU slice, whose hosts need a run directory they all see. Words in capitals
are the user's to fill in.
"""
from __future__ import annotations

import shlex
from typing import Optional

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
    elif (k := hardware.machine_count(hw.name)) > 1:
        # several machines: SLURM starts them all from one command; a suite runs through torchrun on each node
        per = hw.n_devices // k
        extra = (["--nproc", str(per), "--nnodes", str(k), "--node-rank", "NODE_RANK", "--rdzv-endpoint",
                  "HOST0:29500"] if suite else ["--slurm", "--nodes", str(k), "--gpus-per-node", str(per)])
    elif hw.n_devices > 1:
        extra = ["--nproc", str(hw.n_devices)]
    return shlex.join(["clipa-run", str(path), *extra])


def hardware_mismatch(hardware_name: str, n_devices: int, device_name: str, run: str = "this run trains") -> Optional[str]:
    """What a run on other devices than its recipe's hardware must say (a forgotten --nproc, a GPU recipe
    started where torch finds no GPU, an H100 recipe on A100s): its predicted time and cost, and the memory
    plan's per-device share of the global batch, are for the recipe's hardware. None when they match; the
    local 'cpu' hardware matches any process count. ``run``: the sentence's subject and verb."""
    hw = hardware.get(hardware_name)
    if hw.name == "cpu":
        return None
    other = None if hw.name.startswith("tpu-") else hardware.gpu_machine(device_name)  # None for cpu too
    if device_name == "cpu":
        got = f"on cpu ({n_devices} process{'es' if n_devices > 1 else ''})"
    elif n_devices != hw.n_devices or (other is not None and hardware.get(other).peak_flops != hw.peak_flops):
        got = f"on {n_devices} x {device_name}"
    else:
        return None
    where = "those machines" if hardware.machine_count(hw.name) > 1 else "that machine"
    how = "" if hw.name.startswith("tpu-") else f"; on {where}: {launch_command('...', hw.name, '')}"
    return (f"the recipe is planned for {hw.name} ({hw.n_devices} x {hw.device}) and {run} {got}: its "
            f"predicted time and cost, and the per-device batch its memory plan assumed, are for {hw.name}{how}")
