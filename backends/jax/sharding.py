"""Devices, hosts and how arrays are laid out over them.

One ``jax.sharding.Mesh`` over every device of every host with a ``data`` axis (the batch is
split along it) and an optional ``fsdp`` axis (large parameters split along their biggest
dimension). With ``fsdp=1`` parameters are replicated; XLA inserts the all-gathers, so the
contrastive loss over the global batch needs no hand-written collective.

Multi-host: ``maybe_initialize_distributed`` calls ``jax.distributed.initialize`` when the
launcher says this is one process of many (see its docstring), before anything touches a device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clipa.errors import UserError

# Set by the TPU-pod launch command (launch.py) on every worker: let JAX find its peers itself.
ENV_DISTRIBUTED = "CLIPA_JAX_DISTRIBUTED"
# Below this many elements a parameter stays replicated under fsdp (biases, norms): splitting
# them saves nothing and costs one collective each.
FSDP_MIN_SIZE = 2**16


@dataclass(frozen=True)
class Cluster:
    """Where this process sits: coordinator HOST:PORT, process count and index (None = single)."""

    coordinator: Optional[str] = None
    num_processes: int = 1
    process_id: int = 0
    auto: bool = False  # TPU pod / SLURM: JAX discovers the cluster itself


def maybe_initialize_distributed(cluster: Cluster) -> None:
    """Join the multi-host job if there is one; a no-op for a single process.

    Multi-host when ``cluster.auto`` (``CLIPA_JAX_DISTRIBUTED=1`` set by the TPU launch command)
    or when an explicit coordinator with more than one process is given
    (``clipa-run --backend jax --nnodes N --node-rank R --rdzv-endpoint HOST:PORT``).
    """
    if cluster.auto or cluster.num_processes > 1:
        # CPU hosts exchange collectives over gloo (accelerators use their own fabric; no effect there).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cluster.auto:
        jax.distributed.initialize()
    elif cluster.num_processes > 1:
        if not cluster.coordinator:
            raise UserError("--rdzv-endpoint HOST:PORT is required with --nnodes > 1 (the JAX coordinator)")
        jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id)


def cluster_from_env_and_opts(nnodes: int, node_rank: int, rdzv_endpoint: Optional[str]) -> Cluster:
    auto = os.environ.get(ENV_DISTRIBUTED, "") not in ("", "0")
    return Cluster(coordinator=rdzv_endpoint, num_processes=nnodes, process_id=node_rank, auto=auto)


def make_mesh(fsdp: int = 1, devices: Optional[list] = None) -> Mesh:
    """A (data, fsdp) mesh over ``devices`` (default: all devices of all hosts)."""
    devices = list(devices if devices is not None else jax.devices())
    if len(devices) % fsdp:
        raise UserError(f"fsdp={fsdp} does not divide the {len(devices)} devices")
    grid = np.asarray(devices, dtype=object).reshape(len(devices) // fsdp, fsdp)
    return Mesh(grid, ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device: data x fsdp both hold batch shards."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_sharding(mesh: Mesh, params):
    """Replicated parameters, or with an fsdp axis > 1 the largest divisible dimension split."""
    n = mesh.shape["fsdp"]

    def spec(x):
        if n == 1 or x.size < FSDP_MIN_SIZE:
            return replicated(mesh)
        dims = sorted(range(x.ndim), key=lambda d: -x.shape[d])
        for d in dims:
            if x.shape[d] % n == 0:
                axes = [None] * x.ndim
                axes[d] = "fsdp"
                return NamedSharding(mesh, P(*axes))
        return replicated(mesh)

    return jax.tree_util.tree_map(spec, params)


def global_batch(local: dict, mesh: Mesh) -> dict:
    """This host's numpy batch (its share of the global batch) -> global sharded jax arrays."""
    sh = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in local.items()}


def check_divisible(global_batch_size: int, mesh: Mesh, where: str) -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise UserError(f"{where}: global_batch {global_batch_size} is not divisible by the {n} devices")
    if global_batch_size % jax.process_count():
        raise UserError(f"{where}: global_batch {global_batch_size} is not divisible by the {jax.process_count()} hosts")


def to_host(tree):
    """A pytree of (possibly multi-host, possibly fsdp-sharded) arrays -> numpy on every host."""
    def one(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if not x.is_fully_replicated:
            x = jax.jit(lambda y: y, out_shardings=NamedSharding(x.sharding.mesh, P()))(x)
        return np.asarray(x.addressable_data(0))

    return jax.tree_util.tree_map(one, tree)


def all_gather_json(obj) -> list:
    """``obj`` (JSON: numbers, strings, lists, dicts) of every host, in process order (collective)."""
    if jax.process_count() == 1:
        return [obj]
    import json

    from jax.experimental import multihost_utils

    # Hosts' texts differ in length: gather the lengths, then the texts padded to the longest.
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    n = int(multihost_utils.process_allgather(np.array([data.size])).max())
    every = multihost_utils.process_allgather(np.pad(data, (0, n - data.size), constant_values=ord(" ")))
    return [json.loads(row.tobytes().decode()) for row in np.asarray(every).reshape(-1, n)]
