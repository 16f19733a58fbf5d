"""Training-step throughput of the JAX backend, with the PyTorch backend as the baseline.

    python benchmarks/train_step_jax.py [--steps 10] [--batch 128]

CPU (always): the ``demo`` encoder at the demo recipe's first-stage shapes (32 px, 12 text
tokens), JAX and PyTorch on the same batch in this run: samples/s of each and the ratio.
GPU (when JAX sees one): samples/s per device and MFU for B/16 at 112 px and L/16 at 96 px in
bf16, with the PyTorch backend on the same shapes as the baseline (``gpu_torch.samples_per_s``) and
the ratio; MFU counts FLOPs with ``clipa.costmodels.flops`` against the device's peak in
``clipa.costmodels.hardware``. Without a GPU that part prints a skip line.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from clipa import encoders
from clipa.recipe import OptimizerSpec, Stage

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_torch.py beside it, run as a file or with -m
import gpu_torch  # noqa: E402


def _batch(batch, size, text_len, seed=0):
    rng = np.random.default_rng(seed)
    text = rng.integers(1, 49406, (batch, text_len)).astype(np.int32)
    text[:, -1] = 49407
    return {"image": rng.normal(size=(batch, 3, size, size)).astype(np.float32), "text": text}


def _stage(batch, size, text_len):
    return Stage(name="bench", samples=1000 * batch, global_batch=batch, image_size=size, text_len=text_len,
                 optimizer=OptimizerSpec(lr=1e-4))


def jax_samples_per_s(enc, batch, size, text_len, steps, dtype=None, remat=False) -> float:
    import jax
    import jax.numpy as jnp

    from clipa.backends.jax import model as M, sharding as shd, trainer as T

    dtype = dtype or jnp.float32
    st = _stage(batch, size, text_len)
    m = M.build(enc, dtype=dtype, remat=remat)
    tx = T.optimizer(st.optimizer, T.schedule(st))
    mesh = shd.make_mesh()
    params = jax.device_get(M.init_params(m, jax.random.key(0), size, text_len))
    state = T.place_state(T.init_state(params, tx), mesh)
    step = T.make_step(m, tx, mesh, state, ["image", "text"])
    b = shd.global_batch(_batch(batch, size, text_len), mesh)
    for _ in range(2):  # compile + warm
        state, out = step(state, b)
    jax.block_until_ready(out["loss"])
    t0 = time.perf_counter()
    for _ in range(steps):
        state, out = step(state, b)
    jax.block_until_ready(out["loss"])
    return steps * batch / (time.perf_counter() - t0)


def torch_samples_per_s(enc, batch, size, text_len, steps) -> float:
    import torch

    from clipa.backends.torch.model import CLIPA
    from clipa.backends.torch.trainer import build_optimizer, train_step

    st = _stage(batch, size, text_len)
    m = CLIPA(enc, size)
    opt = build_optimizer(m, st)
    nb = _batch(batch, size, text_len)
    b = {"image": torch.from_numpy(nb["image"]), "text": torch.from_numpy(nb["text"]).long()}

    def one():
        return train_step(m, opt, b, 1e-4)

    for _ in range(2):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * batch / (time.perf_counter() - t0)


def cpu_section(steps: int, batch: int) -> None:
    import torch

    enc = encoders.get("demo")
    size, text_len = 32, 12  # recipes/demo.yaml, stage pretrain-32px
    print(f"CPU: encoder demo, batch {batch}, {size} px, {text_len} text tokens, fp32, {steps} timed steps; "
          f"torch threads {torch.get_num_threads()}")
    j = jax_samples_per_s(enc, batch, size, text_len, steps)
    t = torch_samples_per_s(enc, batch, size, text_len, steps)
    print(f"  jax   {j:8.1f} samples/s")
    print(f"  torch {t:8.1f} samples/s (baseline, same run)")
    print(f"  ratio jax/torch {j / t:.2f}")


def _peak_flops(device_kind: str):
    from clipa.costmodels import hardware

    hw = hardware.gpu_machine(device_kind)
    return (hardware.get(hw).peak_flops, hw) if hw else (None, None)


def gpu_section(steps: int) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    from clipa.costmodels import flops

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        print("GPU: skipped (JAX sees no GPU; B/16 @ 112 px and L/16 @ 96 px need one)")
        return
    kind = gpus[0].device_kind
    peak, hw = _peak_flops(kind)
    # Per-device batch 256 and 32 text tokens: CLIPA's low-resolution pretraining shapes are a
    # recipe's choice; these are fixed here so runs are comparable (the cases of gpu_torch.py).
    for name, size, batch in (("B/16", 112, 256), ("L/16", 96, 256)):
        enc = encoders.get(name)
        text_len = 32
        sps = jax_samples_per_s(enc, batch * len(gpus), size, text_len, steps, dtype=jnp.bfloat16) / len(gpus)
        f = flops.train_flops_per_sample(enc, enc.vision.tokens(size), text_len)
        mfu = f"{f * sps / peak:.1%} of {hw} peak" if peak else f"n/a (no peak known for {kind})"
        print(f"GPU {kind} x{len(gpus)}: {name} @ {size} px, batch {batch}/device, bf16: "
              f"{sps:,.0f} samples/s per device, MFU {mfu}")
        if torch.cuda.is_available():  # the PyTorch backend on one of the same GPUs, same shapes
            t_sps, _ = gpu_torch.samples_per_s(enc, size, batch, text_len, steps)
            print(f"  torch {t_sps:,.0f} samples/s per device (baseline, same run); ratio jax/torch {sps / t_sps:.2f}")
        else:
            print("  torch baseline: n/a (this torch build sees no CUDA device)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--skip-cpu", action="store_true", help="GPU section only")
    a = ap.parse_args()
    if not a.skip_cpu:
        cpu_section(a.steps, a.batch)
    gpu_section(a.steps)


if __name__ == "__main__":
    main()
