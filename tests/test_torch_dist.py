"""2 gloo processes (real torchrun) give the loss and gradients of 1 process with the same global batch.

This file is also the torchrun script: ``python -m torch.distributed.run ... tests/test_torch_dist.py OUT``.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np

GLOBAL_BATCH = 8


def _worker(out: str) -> None:
    import torch

    from clipa import encoders
    from clipa.backends.torch import dist as tdist
    from clipa.backends.torch.model import CLIPA

    torch.set_num_threads(1)
    world = tdist.init("cpu")
    enc = encoders.get("test")
    torch.manual_seed(0)
    model = CLIPA(enc, 32)
    ddp = tdist.wrap(model, world)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.standard_normal((GLOBAL_BATCH, 3, 32, 32)).astype(np.float32))
    text = torch.from_numpy(rng.integers(1, 49000, (GLOBAL_BATCH, 12)))
    text[:, 0], text[:, -1] = 49406, 49407
    keep = torch.from_numpy(np.sort(np.stack([rng.permutation(16)[:10] for _ in range(GLOBAL_BATCH)]), 1))
    per = GLOBAL_BATCH // world.world_size
    sl = slice(world.rank * per, (world.rank + 1) * per)
    img, txt, scale = ddp(image[sl], text[sl], keep[sl])
    loss = tdist.contrastive_loss(img, txt, scale)
    loss.backward()
    mean_loss = tdist.mean_over_ranks(loss.detach())
    if world.is_main:
        grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
        np.savez(out, loss=mean_loss.numpy(), **grads)
    tdist.shutdown()


def _run(nproc: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           __file__, str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


def test_two_processes_equal_one(tmp_path):
    one = _run(1, tmp_path / "one.npz")
    two = _run(2, tmp_path / "two.npz")
    assert set(one) == set(two) and len(one) > 10
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0, atol=1e-5)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-5, err_msg=name)
    # the test can fail: the gradients are not trivially zero
    assert max(np.abs(one[n]).max() for n in one if n != "loss") > 1e-3


if __name__ == "__main__":
    _worker(sys.argv[1])
