"""Images/s per core of the training pipeline: draft-mode JPEG decoding vs full decode + resize.

    python benchmarks/data_pipeline.py [--images 160 --sizes 64 112 224 --reps 3]

Writes JPEG shards of ~512-px photos-like images (LAION's typical download size; smooth colour
fields with texture so the JPEGs have realistic entropy) to a temp dir, then runs the real pipeline
(shard read, decode, random resized crop, tokenize, normalise; one process, no workers) twice per
size: with Pillow draft decoding (clipa's default) and with plain full-size decoding (the baseline,
same code path with ``draft=False``); then the image path alone (decode + crop, no tar/text/batching). Prints images per CPU-second of the process (= images/s per
core) for both and the ratio; best of ``--reps`` runs, as the benchmark machine may be shared.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
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

WORDS = "a photo of the red car parked near an old house with green trees and blue sky in summer".split()


def photo_like(rng: np.random.Generator) -> bytes:
    w, h = int(rng.integers(448, 577)), int(rng.integers(384, 513))
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    a = np.asarray(base, np.float32) + rng.normal(0, 5, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 112, 224])
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    tokenizer.get()  # vocab load is start-up, not per image
    with tempfile.TemporaryDirectory() as d:
        samples = [{"__key__": f"{i:06d}", "jpg": photo_like(rng),
                    "txt": " ".join(rng.choice(WORDS, 12)).encode()} for i in range(a.images)]
        shard = write_shard(Path(d) / "bench-000.tar", samples)
        mean_kb = np.mean([len(s["jpg"]) for s in samples]) / 1024
        print(f"{a.images} JPEGs, mean {mean_kb:.0f} KiB, ~512 px; one process (images/s per core)")
        enc = encoders.get("B/16")
        print(f"{'px':>5} {'what':>22} {'draft img/s':>12} {'full-decode img/s':>18} {'ratio':>6}")
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
            print(f"{size:>5} {'pipeline (batches)':>22} {best[True]:>12.0f} {best[False]:>18.0f} "
                  f"{best[True] / best[False]:>5.2f}x")
            dec = {True: 0.0, False: 0.0}  # the image path alone: decode + random resized crop
            for _ in range(a.reps):
                for draft in (True, False):
                    t = time.process_time()
                    for i, s in enumerate(samples):
                        decode.decode_train(s["jpg"], size, st.augment, np.random.default_rng(i), draft)
                    dec[draft] = max(dec[draft], len(samples) / (time.process_time() - t))
            print(f"{size:>5} {'decode + crop only':>22} {dec[True]:>12.0f} {dec[False]:>18.0f} "
                  f"{dec[True] / dec[False]:>5.2f}x")


if __name__ == "__main__":
    main()
