"""The embedded demo dataset: coloured shapes with wordy captions, generated (no download).

Ten shape classes drawn with Pillow, dark and large, in several colours, sizes and positions on
light noisy backgrounds. The shape is the class and is always named in the caption; colour, size and
position are named some of the time, wrapped in filler words ("well, here we can actually see a small
red star ..."), so syntax masking has nouns and adjectives to keep. Train split: webdataset
``jpg``+``txt``+``json``+``pos.json`` shards (spaCy tags stored once, syntax_prep.py's format); held-out split:
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

from clipa.backends.data.webdataset_io import POS_EXT, write_shard

# "bar" replaced "hexagon": at 32 px the pretrained demo model put 114 of 200 held-out hexagons in
# circle or square (recipes/demo.yaml's pretraining stage alone, seed 0: 62.8% top-1 on 2,000 images).
SHAPES = ("arrow", "bar", "circle", "crescent", "cross", "diamond", "ring", "square", "star", "triangle")
# Dark, saturated shapes on light backgrounds: with both light-on-dark and dark-on-light pictures a tiny
# ViT needs far more samples to see an outline (a supervised probe of the demo tower on shape labels was
# still at 20 % after 9,600 samples with random polarity; measured with the demo encoder).
COLORS = {"red": (200, 30, 30), "green": (20, 140, 40), "blue": (30, 60, 210), "purple": (120, 30, 150),
          "orange": (225, 105, 10), "black": (15, 15, 15), "brown": (110, 60, 20), "teal": (0, 120, 125)}
# Shapes fill most of the picture: at the 32-px pretraining resolution (4 x 4 patches of 8 px) a radius
# under ~6 px leaves too few pixels to tell a star from a hexagon (the first version, radii 0.13-0.34,
# stayed at chance there; measured with recipes/demo.yaml).
SIZES = {"small": (0.24, 0.29), "medium": (0.3, 0.35), "large": (0.36, 0.42)}  # radius / image side
POSITIONS = {"top": (0.5, 0.42), "bottom": (0.5, 0.58), "left": (0.42, 0.5), "right": (0.58, 0.5),
             "middle": (0.5, 0.5)}
# A caption: filler words + a noun phrase that always names the shape + sometimes its position. Colour,
# size and position are named only some of the time (probabilities below): when they are always named,
# 8 x 3 x 7 attribute combinations already tell the 64 captions of a batch apart and the contrastive
# loss falls without the model ever looking at the shape (top-1 stayed at chance, measured). At 0.5 / 0.3 /
# 0.3 shape learning started at a different point of each seed's run: recipes/demo.yaml's final top-1 spanned
# 65.25-84.6% over 5 seeds. At 0.2 / 0.1 / 0.1 the shape is most of what tells captions apart and seeds
# 0 / 1 / 2 ended at 97.7 / 97.35 / 96.65 % (measured 2026-11-30, recipes/demo.yaml; README).
OPENERS = ("well, here we can actually see", "so this is basically just", "i think that what we have got here is really",
           "honestly it looks like there is", "you can probably tell that the picture shows", "there is", "a picture of",
           "")
WHERE = ("that is sitting near the {pos} of the picture", "which somebody put on the {pos}", "over at the {pos}",
         "located at the {pos}")
P_COLOR, P_SIZE, P_POS = 0.2, 0.1, 0.1
# Zero-shot prompts in the captions' own words (a demo model has never seen "photo" or "drawing").
TEMPLATES = ("a {}.", "a picture of a {}.", "there is a {} in the picture.", "here we can see a {}.",
             "this is basically just a {}.", "the picture shows one {}.")
SHARD_SAMPLES = 1000


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n, radii, start):
        return [(cx + radii[i % len(radii)] * r * math.cos(start + rot + 2 * math.pi * i / n),
                 cy + radii[i % len(radii)] * r * math.sin(start + rot + 2 * math.pi * i / n)) for i in range(n)]
    if shape == "square":
        return ring(4, [1.0], math.pi / 4)
    if shape == "triangle":
        return ring(3, [1.0], -math.pi / 2)
    if shape == "star":
        return ring(10, [1.0, 0.42], -math.pi / 2)
    if shape == "diamond":  # a tall rhombus, so it is not a turned square
        pts = [(0, -1.0), (0.6, 0), (0, 1.0), (-0.6, 0)]
    elif shape == "bar":
        pts = [(-1, -0.35), (1, -0.35), (1, 0.35), (-1, 0.35)]
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
    while True:  # a light background far enough from the shape's colour to see it
        bg = rng.integers(150, 256, 3)
        if np.abs(bg - fg).sum() > 180:
            break
    im = Image.new("RGB", (px, px), tuple(int(v) for v in bg))
    d = ImageDraw.Draw(im)
    r = rng.uniform(*SIZES[size]) * px
    cx, cy = (np.array(POSITIONS[pos]) + rng.normal(0, 0.02, 2)) * px
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
    a = np.asarray(im, np.float32) + rng.normal(0, 8, (px, px, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def caption(shape: str, color: str, size: str, pos: str, rng: np.random.Generator) -> str:
    """A wordy caption that always names ``shape`` and names each attribute with its probability."""
    words = [size] if rng.random() < P_SIZE else []
    words += [color] if rng.random() < P_COLOR else []
    article = "an" if (words[0] if words else shape)[0] in "aeiou" else "a"
    text = " ".join(w for w in (OPENERS[rng.integers(len(OPENERS))], article, *words, shape) if w)
    if rng.random() < P_POS:
        text += " " + WHERE[rng.integers(len(WHERE))].format(pos=pos)
    return text


def _sample(i: int, split: int, seed: int, px: int) -> tuple[str, Image.Image, str, dict]:
    rng = np.random.default_rng([seed, split, i])
    shape = SHAPES[i % len(SHAPES)]  # balanced classes
    color = list(COLORS)[rng.integers(len(COLORS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
    im = draw(shape, color, size, pos, px, rng)
    return shape, im, caption(shape, color, size, pos, rng), {"shape": shape, "color": color, "size": size,
                                                               "position": pos}


def _tags(captions: list[str]) -> list[bytes] | None:
    """Part-of-speech priorities for syntax masking, tagged once here rather than on every epoch
    (syntax_prep.py: ~1.6 ms per caption per core); None when spaCy's pipeline is missing."""
    from clipa.backends.data import syntax_prep
    from clipa.errors import UserError
    try:
        return [json.dumps(t).encode() for t in syntax_prep.tag(captions)]
    except (ImportError, UserError):  # the pipeline tags online (or reports the missing model) instead
        return None


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(out_dir: Path, n_train: int = 10_000, n_val: int = 500, image_size: int = 64, seed: int = 0,
             tag: bool = True) -> dict:
    """Write the demo dataset under ``out_dir``; returns the paths a recipe's ``dataset`` section needs:
    ``train`` (brace pattern), ``train_samples``, ``val`` (folder), ``classnames``, ``templates``.
    ``tag``: store spaCy's part-of-speech priorities (``pos.json``) with each caption; without them
    the pipeline tags online."""
    out = Path(out_dir)
    n_shards = max(1, -(-n_train // SHARD_SAMPLES))
    for s in range(n_shards):
        samples = []
        for i in range(s * SHARD_SAMPLES, min(n_train, (s + 1) * SHARD_SAMPLES)):
            shape, im, text, meta = _sample(i, 0, seed, image_size)
            samples.append({"__key__": f"{i:08d}", "jpg": _jpeg(im), "txt": text.encode(),
                            "json": json.dumps(meta).encode()})
        tags = _tags([x["txt"].decode() for x in samples]) if tag else None
        for x, t in zip(samples, tags or []):
            x[POS_EXT] = t
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
