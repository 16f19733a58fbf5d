"""The embedded demo dataset: coloured shapes with wordy captions, generated (no download).

Ten shape classes drawn with Pillow in several colours, sizes and positions on noisy backgrounds.
The shape is the class; colour, size and position are attributes named in the caption, wrapped in
filler words ("well, here we can actually see a small red star ..."), so syntax masking has nouns
and adjectives to keep. Train split: webdataset ``jpg``+``txt``+``json`` shards; held-out split:
``val/CLASS/*.jpg`` with ``classnames.txt`` and ``templates.txt`` (zeroshot.py's format).
Deterministic by seed. ``python -m clipa.backends.data.demo_data OUT_DIR [--train N --val M --size PX]``
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipa.backends.data.webdataset_io import write_shard

SHAPES = ("arrow", "circle", "crescent", "cross", "diamond", "hexagon", "ring", "square", "star", "triangle")
COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 220), "yellow": (240, 220, 40),
          "orange": (250, 140, 20), "purple": (140, 40, 170), "white": (245, 245, 245), "black": (15, 15, 15)}
SIZES = {"small": (0.13, 0.18), "medium": (0.2, 0.26), "large": (0.28, 0.34)}  # radius / image side
POSITIONS = {"top": (0.5, 0.3), "bottom": (0.5, 0.7), "left side": (0.3, 0.5), "right side": (0.7, 0.5),
             "middle": (0.5, 0.5), "top left corner": (0.3, 0.3), "bottom right corner": (0.7, 0.7)}
CAPTIONS = (
    "well, here we can actually see a {size} {color} {shape} that is sitting near the {pos} of the picture",
    "so this is basically just a {color} {shape}, kind of {size}, that somebody put on the {pos}",
    "i think that what we have got here is really a {size} {shape} which is {color}, over at the {pos}",
    "honestly it looks like there is a {color} {shape} of a {size} size and it is located at the {pos}",
    "you can probably tell that the picture shows one {size} {color} {shape} on the {pos}",
    "a {size} {color} {shape}",
)
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a drawing of a {}.", "an image showing a {}.",
             "a small {}.", "a large {}.")
SHARD_SAMPLES = 1000


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n, radii, start):
        return [(cx + radii[i % len(radii)] * r * math.cos(start + rot + 2 * math.pi * i / n),
                 cy + radii[i % len(radii)] * r * math.sin(start + rot + 2 * math.pi * i / n)) for i in range(n)]
    if shape == "square":
        return ring(4, [1.0], math.pi / 4)
    if shape == "triangle":
        return ring(3, [1.0], -math.pi / 2)
    if shape == "hexagon":
        return ring(6, [1.0], 0.0)
    if shape == "star":
        return ring(10, [1.0, 0.42], -math.pi / 2)
    if shape == "diamond":  # a tall rhombus, so it is not a turned square
        pts = [(0, -1.0), (0.6, 0), (0, 1.0), (-0.6, 0)]
    elif shape == "cross":
        a = 0.33
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
    elif shape == "arrow":
        pts = [(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)]
    else:
        raise ValueError(shape)
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw(shape: str, color: str, size: str, pos: str, px: int, rng: np.random.Generator) -> Image.Image:
    """One ``px`` x ``px`` RGB picture of ``shape`` with the given attributes, on a noisy background."""
    fg = np.array(COLORS[color])
    while True:  # a background far enough from the shape's colour to see it
        bg = rng.integers(0, 256, 3)
        if np.abs(bg - fg).sum() > 180:
            break
    im = Image.new("RGB", (px, px), tuple(int(v) for v in bg))
    d = ImageDraw.Draw(im)
    r = rng.uniform(*SIZES[size]) * px
    cx, cy = (np.array(POSITIONS[pos]) + rng.normal(0, 0.03, 2)) * px
    rot = rng.uniform(-0.2, 0.2)
    col = tuple(int(v) for v in np.clip(fg + rng.integers(-20, 21, 3), 0, 255))
    if shape in ("circle", "ring"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        if shape == "ring":
            q = 0.55 * r
            d.ellipse([cx - q, cy - q, cx + q, cy + q], fill=tuple(int(v) for v in bg))
    elif shape == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        o = 0.45 * r
        d.ellipse([cx - r + o, cy - r - o * 0.3, cx + r + o, cy + r - o * 0.3], fill=tuple(int(v) for v in bg))
    else:
        d.polygon(_polygon(shape, cx, cy, r, rot), fill=col)
    a = np.asarray(im, np.float32) + rng.normal(0, 12, (px, px, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _sample(i: int, split: int, seed: int, px: int) -> tuple[str, Image.Image, str, dict]:
    rng = np.random.default_rng([seed, split, i])
    shape = SHAPES[i % len(SHAPES)]  # balanced classes
    color = list(COLORS)[rng.integers(len(COLORS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
    im = draw(shape, color, size, pos, px, rng)
    caption = CAPTIONS[rng.integers(len(CAPTIONS))].format(size=size, color=color, shape=shape, pos=pos)
    return shape, im, caption, {"shape": shape, "color": color, "size": size, "position": pos}


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(out_dir: Path, n_train: int = 10_000, n_val: int = 500, image_size: int = 64, seed: int = 0) -> dict:
    """Write the demo dataset under ``out_dir``; returns the paths a recipe's ``dataset`` section needs:
    ``train`` (brace pattern), ``train_samples``, ``val`` (folder), ``classnames``, ``templates``."""
    out = Path(out_dir)
    n_shards = max(1, -(-n_train // SHARD_SAMPLES))
    for s in range(n_shards):
        samples = []
        for i in range(s * SHARD_SAMPLES, min(n_train, (s + 1) * SHARD_SAMPLES)):
            shape, im, caption, meta = _sample(i, 0, seed, image_size)
            samples.append({"__key__": f"{i:08d}", "jpg": _jpeg(im), "txt": caption.encode(),
                            "json": json.dumps(meta).encode()})
        write_shard(out / "train" / f"shard-{s:05d}.tar", samples)
    val = out / "val"
    for i in range(n_val):
        shape, im, _, _ = _sample(i, 1, seed, image_size)
        (val / shape).mkdir(parents=True, exist_ok=True)
        im.save(val / shape / f"{i:06d}.jpg", quality=90)
    classnames = out / "classnames.txt"
    classnames.write_text("\n".join(sorted(SHAPES)) + "\n")
    templates = out / "templates.txt"
    templates.write_text("\n".join(TEMPLATES) + "\n")
    return {"train": str(out / "train" / f"shard-{{00000..{n_shards - 1:05d}}}.tar"), "train_samples": n_train,
            "val": str(val), "classnames": str(classnames), "templates": str(templates)}


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m clipa.backends.data.demo_data", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=10_000, help="training samples")
    ap.add_argument("--val", type=int, default=500, help="held-out zero-shot images")
    ap.add_argument("--size", type=int, default=64, help="image side, px")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.train < 1 or a.val < 1 or a.size < 16:
        print("error: --train and --val must be >= 1 and --size >= 16", flush=True)
        return 2
    print(json.dumps(generate(a.out_dir, a.train, a.val, a.size, a.seed), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
