"""Images/s per core of the training pipeline: draft-mode JPEG decoding vs full decode + resize, and vs
OpenCLIP's own webdataset pipeline.

    python benchmarks/data_pipeline.py [--images 192 --sizes 64 84 112 224 --reps 5 --px 384 1024]

Test images: JPEG shards (quality 90) of photo-like images whose longer side is uniform in ``--px``
(default 384..1024: LAION images are often larger than the 512 px of CLIPA's own preprocessing) and
aspect ratio (long/short) uniform in 1..4/3, either orientation. Content: a smooth random colour field
plus per-pixel Gaussian noise (sigma 5). The noise keeps the bits per pixel the same at every size
(~2 bpp; printed), whereas real photos compress better the larger they are, so the large images here
are conservative for draft decoding, whose floor is the Huffman decoding of every compressed byte.

Both paths run the real pipeline (``batches_for``: tar shard read, per-sample RNG, random resized crop
0.4..1, CLIP BPE tokenisation, batching of uint8 images, one CLIP normalisation per batch; one process,
no workers) and differ ONLY in how a JPEG becomes the crop:
  reduced  (clipa): Pillow draft mode = libjpeg DCT scaling by 1/2, 1/4 or 1/8, the smallest scale
           that leaves >= the output size on the crop's shorter side; then the BICUBIC resize of the box.
  baseline        : plain full-size decode, then the same BICUBIC (antialiased) resize of the crop box.
           This is torchvision's RandomResizedCrop(interpolation=BICUBIC) on a PIL image, which is what
           open_clip's training transform uses, except that torchvision copies the crop before resizing
           (``crop().resize()``; a little slower, and a few border pixels differ): our baseline is the
           slightly faster of the two.
The peer: OpenCLIP's training loader as its trainer builds it (``open_clip_train.data.get_wds_dataset``,
resampled shards, workers=0 so that it runs in this process) with its own training transform
(``open_clip.image_transform(size, is_train=True)``: RandomResizedCrop BICUBIC, ToTensor, Normalize)
at the same crop scale 0.4..1, and its tokenizer at the same text length, on the same shard; run with
``benchmarks/openclip_launch.py``'s webdataset end-of-shard fix. Ratio = clipa (reduced) / OpenCLIP.
Figures are images per CPU-second of this process (time.process_time = images/s per core, robust to a
busy shared box); best of ``--reps``. A second line per size times the image path alone
(``decode_train``: decode + crop + resize, no tar/text/batching).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from clipa import encoders  # noqa: E402
from clipa.backends.data import decode, tokenizer  # noqa: E402
from clipa.backends.data.pipeline import DataStats, _job_config, batches_for  # noqa: E402
from clipa.backends.data.webdataset_io import write_shard  # noqa: E402
from clipa.recipe import OptimizerSpec, Stage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # openclip_launch.py beside it, as a file or with -m

WORDS = "a photo of the red car parked near an old house with green trees and blue sky in summer".split()


def image_size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    """(width, height): longer side uniform in [lo, hi], long/short uniform in [1, 4/3]."""
    long = int(rng.integers(lo, hi + 1))
    short = int(round(long / rng.uniform(1.0, 4 / 3)))
    return (long, short) if rng.random() < 0.5 else (short, long)


def photo_like(rng: np.random.Generator, lo: int = 384, hi: int = 1024) -> bytes:
    w, h = image_size(rng, lo, hi)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    a = np.asarray(base, np.float32) + rng.normal(0, 5, (h, w, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def openclip_rate(shard: Path, size: int, images: int, text_len: int = 32) -> float:
    """Images per CPU-second of OpenCLIP's training webdataset loader and transform at ``size`` px."""
    import argparse as ap_

    import openclip_launch  # noqa: F401  (binds the end-of-shard fix into open_clip_train.data)
    import open_clip
    import torch
    from open_clip.transform import AugmentationCfg
    from open_clip_train.data import get_wds_dataset

    torch.set_num_threads(1)
    pre = open_clip.image_transform(size, is_train=True, aug_cfg=AugmentationCfg(scale=(0.4, 1.0)))
    tok = open_clip.SimpleTokenizer(context_length=text_len)
    args = ap_.Namespace(train_data=str(shard), train_num_samples=10 * images, dataset_resampled=True,
                         train_data_upsampling_factors=None, seed=0, batch_size=32, workers=0, world_size=1)
    it = iter(get_wds_dataset(args, pre, True, tokenizer=tok).dataloader)
    next(it)  # warm: shard open, shuffle buffer's first fill
    t = time.process_time()
    n = 0
    while n < images:
        n += len(next(it)[0])
    return n / (time.process_time() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 84, 112, 224])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--px", type=int, nargs=2, default=[384, 1024], metavar=("LO", "HI"),
                    help="range of the test images' longer side")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    tokenizer.get()  # vocab load is start-up, not per image
    with tempfile.TemporaryDirectory() as d:
        samples = [{"__key__": f"{i:06d}", "jpg": photo_like(rng, *a.px),
                    "txt": " ".join(rng.choice(WORDS, 12)).encode()} for i in range(a.images)]
        shard = write_shard(Path(d) / "bench-000.tar", samples)
        dims = np.array([Image.open(io.BytesIO(s["jpg"])).size for s in samples])
        nbytes = np.array([len(s["jpg"]) for s in samples])
        bpp = 8 * nbytes.sum() / dims.prod(1).sum()
        print(f"{a.images} JPEGs (q90), longer side {dims.max(1).min()}..{dims.max(1).max()} px "
              f"(median {np.median(dims.max(1)):.0f}), mean {nbytes.mean() / 1024:.0f} KiB, {bpp:.2f} bits/px")
        print("reduced = Pillow draft (DCT-scaled) decode; baseline = full-size decode; both: crop box -> "
              "BICUBIC antialiased resize (= torchvision RandomResizedCrop BICUBIC, open_clip's training "
              "transform); same tar read, RNG, tokeniser, batching, normalisation. One process, images per "
              "CPU-second (= per core), best of", a.reps)
        enc = encoders.get("B/16")
        print(f"{'px':>5} {'what':>22} {'reduced img/s':>14} {'baseline img/s':>15} {'ratio':>6}"
              f" {'OpenCLIP img/s':>15} {'clipa/OpenCLIP':>15}")
        for size in a.sizes:
            st = Stage(name="b", samples=a.images, global_batch=32, image_size=size, text_len=32,
                       optimizer=OptimizerSpec(lr=1e-3))
            cfg = _job_config(st, enc, seed=0, rank=0)
            best = {True: 0.0, False: 0.0}
            for _ in range(a.reps):
                for draft in (True, False):
                    it = batches_for([shard], dataclasses.replace(cfg, draft=draft), 32, 0, 1, 0, 0, DataStats())
                    next(it)  # warm: file handles, shard index
                    t = time.process_time()  # CPU seconds of this one process: per core, robust to a busy box
                    n = 0
                    while n < a.images:
                        n += len(next(it)["image"])
                    best[draft] = max(best[draft], n / (time.process_time() - t))
                    it.close()
            oc = max(openclip_rate(shard, size, a.images) for _ in range(a.reps))
            print(f"{size:>5} {'pipeline (batches)':>22} {best[True]:>14.0f} {best[False]:>15.0f} "
                  f"{best[True] / best[False]:>5.2f}x {oc:>15.0f} {best[True] / oc:>14.2f}x", flush=True)
            dec = {True: 0.0, False: 0.0}  # the image path alone: decode + random resized crop
            for _ in range(a.reps):
                for draft in (True, False):
                    t = time.process_time()
                    for i, s in enumerate(samples):
                        decode.decode_train(s["jpg"], size, st.augment, np.random.default_rng(i), draft)
                    dec[draft] = max(dec[draft], len(samples) / (time.process_time() - t))
            print(f"{size:>5} {'decode + crop only':>22} {dec[True]:>14.0f} {dec[False]:>15.0f} "
                  f"{dec[True] / dec[False]:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
