"""Training-step throughput on CPU: clipa's torch model against open_clip's model of the same shape.

    python benchmarks/train_step_torch.py [--encoder S/16] [--image-size 64] [--text-len 16] [--batch 32]

Both models: same registry shape (open_clip built from a custom config with CLIPA's image-tower options,
pretrained=None), same batch, the torch trainer's own step (``train_step``: loss, AdamW), fp32. Steps of the two models are interleaved
in rounds so that load from other processes hits both alike; the median step time is reported.
Target: ratio (clipa / open_clip samples/s) >= 0.95.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def open_clip_model(enc, image_size: int, text_len: int):
    import open_clip
    from open_clip import factory

    v, t = enc.vision, enc.text
    cfg = {
        "embed_dim": enc.embed_dim,
        # CLIPA's tower in open_clip terms (ViT-*-CLIPA.json) with the fixed sin-cos position embedding.
        "vision_cfg": {"image_size": image_size, "layers": v.depth, "width": v.width, "patch_size": v.patch,
                       "head_width": v.width // v.heads, "mlp_ratio": v.mlp_dim / v.width, "no_ln_pre": True,
                       "pool_type": "avg", "final_ln_after_pool": True, "pos_embed_type": "sin_cos_2d"},
        "text_cfg": {"context_length": text_len, "vocab_size": t.vocab, "width": t.width, "heads": t.heads,
                     "layers": t.depth, "mlp_ratio": t.mlp_dim / t.width, "pool_type": "argmax"},
    }
    factory._MODEL_CONFIGS["clipa-bench"] = cfg
    return open_clip.create_model("clipa-bench", pretrained=None)


def main() -> None:
    from clipa import encoders
    from clipa.backends.torch.model import CLIPA
    from clipa.backends.torch.trainer import build_optimizer, train_step
    from clipa.recipe import OptimizerSpec, Stage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="S/16")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="steps per model per round")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    enc = encoders.get(a.encoder)
    torch.manual_seed(0)
    image = torch.randn(a.batch, 3, a.image_size, a.image_size)
    text = torch.randint(1, 49000, (a.batch, a.text_len))
    text[:, -1] = 49407

    ours = CLIPA(enc, a.image_size).train()
    ref = open_clip_model(enc, a.image_size, a.text_len).train()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())

    # The trainer's own step and optimizer for both models (open_clip's forward returns the same triple:
    # normalised features and exp(logit_scale)).
    st = Stage(name="bench", samples=1000 * a.batch, global_batch=a.batch, image_size=a.image_size,
               text_len=a.text_len, optimizer=OptimizerSpec(lr=1e-4))
    batch = {"image": image, "text": text}

    def stepper(model):
        opt = build_optimizer(model, st)
        return lambda: train_step(model, opt, batch, 1e-4)

    runs = {"clipa": stepper(ours), "open_clip": stepper(ref)}
    times = {k: [] for k in runs}
    for f in runs.values():  # warm-up
        f()
    for _ in range(a.rounds):
        for name, f in runs.items():
            for _ in range(a.steps):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    sps = {k: a.batch / statistics.median(v) for k, v in times.items()}
    print(f"encoder {a.encoder} at {a.image_size} px, text {a.text_len} tokens, batch {a.batch}, "
          f"{a.threads} thread(s), fp32 CPU; params clipa {n_ours / 1e6:.2f} M, open_clip {n_ref / 1e6:.2f} M")
    print(f"clipa      {sps['clipa']:8.1f} samples/s")
    print(f"open_clip  {sps['open_clip']:8.1f} samples/s  (baseline, same run)")
    print(f"ratio      {sps['clipa'] / sps['open_clip']:8.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
