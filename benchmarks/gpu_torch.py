"""GPU training throughput and MFU of the torch backend: B/16 at 112 px and L/16 at 96 px, bf16 autocast.

    python benchmarks/gpu_torch.py [--batch 256] [--text-len 32] [--steps 20] [--compile] [--hw h100x8]
    python benchmarks/gpu_torch.py --cpu-smoke     # tiny shape, a few steps on the CPU (run by the tests)

Prints samples/s per device and MFU against the device's dense bf16 peak (clipa.costmodels.hardware,
``--hw`` names the machine whose per-device peak applies; FLOPs per sample from clipa.costmodels.flops,
no recompute counted). Baseline, measured in the same run: OpenCLIP's own model at the same shape
(clipa.export.config: the CLIPA-configured ViT it loads clipa's weights into) with torch's AdamW and
OpenCLIP's ClipLoss, bf16 autocast too; ratio = clipa / OpenCLIP. On a machine without CUDA it prints a
skip line and exits 0; ``--cpu-smoke`` runs both steps on the CPU at the ``test`` encoder's size in
fp32 so that this script cannot rot between GPU sessions (its figures say nothing about a GPU).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

CASES = (("B/16", 112), ("L/16", 96))  # CLIPA's low-resolution pretraining settings (Li et al. 2023)


def _batch(batch: int, size: int, text_len: int, device: str) -> dict:
    text = torch.randint(1, 49000, (batch, text_len), device=device)
    text[:, -1] = 49407
    return {"image": torch.randn(batch, 3, size, size, device=device), "text": text}


def _amp(device: str):
    def amp():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    return amp


def _timed(step, steps: int, device: str) -> tuple[float, float]:
    """Seconds per step after 3 warm-up steps, and the peak memory in GiB (CUDA; 0 on the CPU)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return (time.perf_counter() - t0) / steps, mem


def _fresh(device: str) -> None:
    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.empty_cache()  # the previous case's model is gone with its call; count this one's peak only
        torch.cuda.reset_peak_memory_stats()


def samples_per_s(enc, size: int, batch: int, text_len: int, steps: int, *, compile: bool = False,
                  grad_checkpointing: bool = False, device: str = "cuda") -> tuple[float, float]:
    """Training samples/s of the torch trainer's own step on one device (bf16 autocast on CUDA, its
    AdamW) and the peak memory in GiB. Also the baseline of train_step_jax.py's GPU section."""
    from clipa.backends.torch.model import CLIPA
    from clipa.backends.torch.trainer import build_optimizer, train_step
    from clipa.recipe import OptimizerSpec, Stage

    _fresh(device)
    model = CLIPA(enc, size).to(device).train()
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    fwd = torch.compile(model) if compile else model
    st = Stage(name="bench", samples=1000 * batch, global_batch=batch, image_size=size, text_len=text_len,
               optimizer=OptimizerSpec(lr=1e-4))
    opt = build_optimizer(model, st)
    b = _batch(batch, size, text_len, device)
    amp = _amp(device)
    dt, mem = _timed(lambda: train_step(fwd, opt, b, 1e-4, amp=amp), steps, device)
    return batch / dt, mem


def openclip_samples_per_s(enc, size: int, batch: int, text_len: int, steps: int, *, compile: bool = False,
                           grad_checkpointing: bool = False, device: str = "cuda") -> tuple[float, float]:
    """The baseline: OpenCLIP's CLIP at the same shape (clipa.export.config), torch AdamW (fused on CUDA,
    as OpenCLIP's trainer leaves it to torch's default) and OpenCLIP's ClipLoss, same autocast."""
    import open_clip
    from open_clip.loss import ClipLoss

    from clipa import export, recipe

    rec = recipe.Recipe.model_validate({
        "name": "bench", "encoder": {"name": enc.name, "class_token": True}, "dataset": {"name": "demo"},
        "hardware": {"name": "cpu"}, "stages": [{"name": "s", "samples": batch, "global_batch": batch,
                                                 "image_size": size, "text_len": text_len,
                                                 "optimizer": {"lr": 1e-4}}]})
    _fresh(device)
    model = open_clip.CLIP(**export.config(rec)["model_cfg"]).to(device).train()
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.2)
    loss_fn = ClipLoss()
    b = _batch(batch, size, text_len, device)
    amp = _amp(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with amp():
            img, txt, scale = fwd(b["image"], b["text"])[:3]
            loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()

    dt, mem = _timed(step, steps, device)
    return batch / dt, mem

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="per-device batch")
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--hw", default=None, help="hardware name for the peak FLOP/s (default: guessed from the GPU)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="the test encoder at 32 px, batch 4, 2 steps on the CPU in fp32: checks the script runs")
    a = ap.parse_args(argv)
    if a.cpu_smoke:
        from clipa import encoders

        torch.set_num_threads(1)  # a check that it runs: on a shared box extra OpenMP threads only spin
        enc = encoders.get("test")
        ours, _ = samples_per_s(enc, 32, 4, 16, 2, device="cpu")
        theirs, _ = openclip_samples_per_s(enc, 32, 4, 16, 2, device="cpu")
        print(f"cpu smoke (test encoder @ 32 px, batch 4, fp32): clipa {ours:.1f} samples/s, OpenCLIP {theirs:.1f}, "
              f"ratio {ours / theirs:.2f} (not a GPU figure)")
        return 0
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
        kw = dict(compile=a.compile, grad_checkpointing=a.grad_checkpointing)
        sps, mem = samples_per_s(enc, size, a.batch, a.text_len, a.steps, **kw)
        base, base_mem = openclip_samples_per_s(enc, size, a.batch, a.text_len, a.steps, **kw)
        tokens = enc.vision.tokens(size)
        f = flops.train_flops_per_sample(enc, tokens, a.text_len)
        print(f"{enc_name} @ {size} px ({tokens} tokens), text {a.text_len}, batch {a.batch}: "
              f"clipa {sps:,.0f} samples/s, MFU {100 * f * sps / peak:.1f}%, peak memory {mem:.1f} GiB; "
              f"OpenCLIP's model {base:,.0f} samples/s, MFU {100 * f * base / peak:.1f}%, {base_mem:.1f} GiB; "
              f"ratio {sps / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
