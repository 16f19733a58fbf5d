"""GPU training throughput and MFU of the JAX backend, the same cases as ``gpu_torch.py``
(B/16 at 112 px and L/16 at 96 px, bf16 compute, float32 parameters), so the two can be compared.

    python benchmarks/gpu_jax.py [--batch 256] [--text-len 32] [--steps 20] [--remat] [--hw h100x8]

Needs a CUDA build of JAX (``pip install -U "jax[cuda12]"``); the batch is split over all local
GPUs (``--batch`` is per device, as in gpu_torch.py). Prints samples/s per device and MFU against the
device's dense bf16 peak (clipa.costmodels.hardware; FLOPs per sample from clipa.costmodels.flops, no
recompute counted). Without a GPU it prints a skip line and exits 0; ``--any-device --cases test:32``
runs the same code on the CPU to check it.
"""
from __future__ import annotations

import argparse
import sys
import time

CASES = "B/16:112,L/16:96"  # CLIPA's low-resolution pretraining settings (Li et al. 2023), as gpu_torch.py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="per-device batch")
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--remat", action="store_true", help="activation rematerialisation per block")
    ap.add_argument("--hw", default=None, help="hardware name for the peak FLOP/s (default: guessed from the GPU)")
    ap.add_argument("--cases", default=CASES, help="ENCODER:PX,... (default %(default)s)")
    ap.add_argument("--any-device", action="store_true", help="run on whatever JAX has (a CPU check of this script)")
    a = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    if jax.default_backend() != "gpu" and not a.any_device:
        print(f"skip: JAX has no GPU (backend {jax.default_backend()!r}; this benchmark measures GPU "
              "throughput; nothing was run)")
        return 0

    from clipa import encoders
    from clipa.backends.jax import model as M, sharding as shd, train as T
    from clipa.costmodels import flops, hardware
    from clipa.recipe import OptimizerSpec, Stage

    dev = jax.devices()[0]
    name = getattr(dev, "device_kind", str(dev))
    if a.hw:
        hw_name = a.hw
    elif jax.default_backend() == "gpu":
        # H200 has the H100 SXM's dense bf16 peak (NVIDIA H200 datasheet, 2024): the h100x8 entry applies.
        hw_name = "h100x8" if ("H100" in name or "H200" in name) else "a100x8"
    else:
        hw_name = "cpu"
    peak = hardware.get(hw_name).peak_flops
    n = jax.device_count()
    dtype = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
    print(f"device {name} x{n}; peak {peak / 1e12:.1f} TFLOP/s per device from hardware {hw_name!r}; "
          f"compute {jnp.dtype(dtype).name}")
    mesh = shd.make_mesh()
    for case in a.cases.split(","):
        enc_name, size = case.rsplit(":", 1)
        size = int(size)
        enc = encoders.get(enc_name)
        gb = a.batch * n
        st = Stage(name="bench", samples=gb * (a.steps + 3), global_batch=gb, image_size=size,
                   text_len=a.text_len, optimizer=OptimizerSpec(lr=1e-4))
        model = M.build(enc, dtype=dtype, remat=a.remat)
        params = jax.device_get(M.init_params(M.build(enc), jax.random.key(0), size, a.text_len))
        tx = T.optimizer(st.optimizer, T.schedule(st))
        state = T.place_state(T.init_state(params, tx), mesh)
        del params
        rng = np.random.default_rng(0)
        text = rng.integers(1, 49000, (gb, a.text_len)).astype(np.int32)
        text[:, -1] = 49407
        batch = shd.global_batch({"image": rng.normal(size=(gb, 3, size, size)).astype(np.float32),
                                  "text": text}, mesh)
        step = T.make_step(model, tx, mesh, state, list(batch))
        for _ in range(3):  # compile + warm up
            state, out = step(state, batch)
        jax.block_until_ready(out["loss"])
        t0 = time.perf_counter()
        for _ in range(a.steps):
            state, out = step(state, batch)
        jax.block_until_ready(out["loss"])
        sps = a.steps * gb / (time.perf_counter() - t0) / n
        tokens = enc.vision.tokens(size)
        mfu = flops.train_flops_per_sample(enc, tokens, a.text_len) * sps / peak
        mem = ""
        stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            mem = f", peak memory {stats['peak_bytes_in_use'] / 2**30:.1f} GiB"
        print(f"{enc_name} @ {size} px ({tokens} tokens), text {a.text_len}, batch {a.batch}/device: "
              f"{sps:,.0f} samples/s per device, MFU {100 * mfu:.1f}%{mem}  (loss {float(out['loss']):.3f})")
        del state, step, batch
    return 0


if __name__ == "__main__":
    sys.exit(main())
