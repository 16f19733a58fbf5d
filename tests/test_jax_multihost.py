"""Two real JAX processes (2 CPU devices each, joined by jax.distributed over gloo), each feeding its
own half of the global batch, train exactly as one process on the whole batch."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")


def _train(rank=None, world=1):
    import jax

    from clipa.backends.jax import sharding as shd
    from jax_steps import B, flat_params, problem, two_steps

    m, tx, params, batch = problem()
    if rank is not None:  # this host's rows only, as the data pipeline gives them
        batch = {k: v[rank * B // world:(rank + 1) * B // world] for k, v in batch.items()}
    state, losses = two_steps(m, tx, params, batch, shd.make_mesh())
    flat = flat_params(state)
    return {"losses": losses, "checksum": float(np.abs(flat).sum()), "devices": jax.device_count(),
            "processes": jax.process_count(), "head": flat[:1000].tolist()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one():
    addr = f"localhost:{_free_port()}"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, __file__, addr, str(r)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    ref = _train()
    for o in outs:
        assert o["processes"] == 2 and o["devices"] == 4
        for a, b in zip(o["losses"], ref["losses"]):
            assert a == pytest.approx(b, abs=1e-5)
        np.testing.assert_allclose(o["head"], ref["head"], atol=1e-4)
        assert o["checksum"] == pytest.approx(ref["checksum"], rel=1e-5)


if __name__ == "__main__":
    from clipa.backends.jax import sharding as shd

    coordinator, rank = sys.argv[1], int(sys.argv[2])
    shd.maybe_initialize_distributed(shd.Cluster(coordinator=coordinator, num_processes=2, process_id=rank))
    print(json.dumps(_train(rank, 2)))
