"""JPEG decode rate of one CPU core at the pre-training resolutions (images/s/core).

    python benchmarks/decode_rate.py [--seconds 1.0] [--sizes 64 84 112 160 224 336]

What it measures: what the data pipeline does per image before the model sees it: PIL opens the
JPEG bytes, ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the target),
then a bicubic resize of the short side to the target and a centre crop. Baseline, measured in the
same run: the same without ``draft`` (full-size decode, then resize); ratio = draft / baseline.
The source image is a real photo shipped with matplotlib (``sample_data/grace_hopper.jpg``,
512 x 600 px), re-encoded once at quality 90 (the img2dataset default) at its size and at 2x
(1024 x 1200), because web images come at several sizes. One process, one thread: a per-core rate.
The figures printed last go into ``costmodels/data/hardware.yaml`` (``decode``).
"""
from __future__ import annotations

import argparse
import io
import time
from datetime import date
from pathlib import Path

import matplotlib
from PIL import Image


def cpu_model() -> str:
    from clipa.costmodels.hardware import _cpu_model

    return _cpu_model()


def source_jpegs() -> dict[str, bytes]:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = Image.open(path).convert("RGB")
    out = {}
    for scale in (1, 2):
        im = img if scale == 1 else img.resize((img.width * scale, img.height * scale), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out[f"{im.width}x{im.height}"] = buf.getvalue()
    return out


def load(data: bytes, size: int, draft: bool) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    if draft:
        im.draft("RGB", (size, size))       # keeps both sides >= size
    im = im.convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))


def rate(data: bytes, size: int, draft: bool, seconds: float) -> float:
    load(data, size, draft)                 # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        load(data, size, draft)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 84, 112, 160, 224, 336])
    args = ap.parse_args()
    sources = source_jpegs()
    summary = {}
    print(f"{'source':>10} {'size':>5} {'draft img/s':>12} {'full img/s':>11} {'ratio':>6}")
    for size in args.sizes:
        per_src = []
        for name, data in sources.items():
            r_draft = rate(data, size, True, args.seconds)
            r_full = rate(data, size, False, args.seconds)
            per_src.append(r_draft)
            print(f"{name:>10} {size:>5} {r_draft:>12.1f} {r_full:>11.1f} {r_draft / r_full:>6.2f}")
        # Mean over the source sizes: web images come at both.
        summary[size] = sum(per_src) / len(per_src)
    print("\n# costmodels/data/hardware.yaml, decode:")
    print("  images_per_s_per_core: {" + ", ".join(f"{k}: {v:.0f}" for k, v in summary.items()) + "}")
    print(f'  source: "measured by benchmarks/decode_rate.py on {date.today().isoformat()}, {cpu_model()}, '
          f'mean over {", ".join(sources)} px JPEG q90 sources, 1 thread"')


if __name__ == "__main__":
    main()
