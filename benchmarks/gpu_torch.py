"""GPU training throughput and MFU of the torch backend: B/16 at 112 px and L/16 at 96 px, bf16 autocast.

    python benchmarks/gpu_torch.py [--batch 256] [--text-len 32] [--steps 20] [--compile] [--hw h100x8]

Prints samples/s per device and MFU against the device's dense bf16 peak (clipa.costmodels.hardware,
``--hw`` names the machine whose per-device peak applies; FLOPs per sample from clipa.costmodels.flops,
no recompute counted). On a machine without CUDA it prints a skip line and exits 0.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

CASES = (("B/16", 112), ("L/16", 96))  # CLIPA's low-resolution pretraining settings (Li et al. 2023)


def samples_per_s(enc, size: int, batch: int, text_len: int, steps: int, *, compile: bool = False,
                  grad_checkpointing: bool = False) -> tuple[float, float]:
    """Training samples/s of the torch trainer's step on one CUDA device (bf16 autocast, its AdamW)
    and the peak memory in GiB. Also the baseline of train_step_jax.py's GPU section."""
    from clipa.backends.torch.model import CLIPA
    from clipa.backends.torch.trainer import build_optimizer, train_step
    from clipa.recipe import OptimizerSpec, Stage

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.cuda.empty_cache()  # the previous case's model is gone with its call; count this one's peak only
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = CLIPA(enc, size).cuda().train()
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    fwd = torch.compile(model) if compile else model
    st = Stage(name="bench", samples=1000 * batch, global_batch=batch, image_size=size, text_len=text_len,
               optimizer=OptimizerSpec(lr=1e-4))
    opt = build_optimizer(model, st)
    text = torch.randint(1, 49000, (batch, text_len), device="cuda")
    text[:, -1] = 49407
    b = {"image": torch.randn(batch, 3, size, size, device="cuda"), "text": text}

    def amp():
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def step():
        train_step(fwd, opt, b, 1e-4, amp=amp)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0), torch.cuda.max_memory_allocated() / 2**30

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="per-device batch")
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--hw", default=None, help="hardware name for the peak FLOP/s (default: guessed from the GPU)")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("skip: no CUDA device (this benchmark measures GPU throughput; nothing was run)")
        return 0

    from clipa import encoders
    from clipa.costmodels import flops, hardware

    name = torch.cuda.get_device_name()
    hw_name = a.hw or hardware.gpu_machine(name) or "a100x8"
    peak = hardware.get(hw_name).peak_flops
    print(f"device {name}; peak {peak / 1e12:.0f} TFLOP/s bf16 per device from hardware {hw_name!r}")
    for enc_name, size in CASES:
        enc = encoders.get(enc_name)
        sps, mem = samples_per_s(enc, size, a.batch, a.text_len, a.steps, compile=a.compile,
                                 grad_checkpointing=a.grad_checkpointing)
        tokens = enc.vision.tokens(size)
        mfu = flops.train_flops_per_sample(enc, tokens, a.text_len) * sps / peak
        print(f"{enc_name} @ {size} px ({tokens} tokens), text {a.text_len}, batch {a.batch}: "
              f"{sps:,.0f} samples/s, MFU {100 * mfu:.1f}%, peak memory {mem:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
