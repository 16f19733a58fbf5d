"""ImageNet-style zero-shot classification data: ``val/CLASS/*.jpg`` + class names + prompt templates.

Class folders are taken in sorted order; the class-name file has one line per folder in that order,
either ``name`` or ``wnid<TAB>name`` (the wnid must then equal the folder name). The templates file
has one prompt per line with ``{}`` where the class name goes. Without a class-name file the folder
names are used (underscores as spaces); without a templates file, ``a photo of a {}.`` (CLIP's
default prompt, Radford et al. 2021).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from clipa.backends.data.decode import DecodeError, decode_eval, normalize
from clipa.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class ZeroShotSet:
    classnames: list[str]
    templates: list[str]
    n_images: int
    files: list[Path] = field(default_factory=list, repr=False)
    labels: list[int] = field(default_factory=list, repr=False)
    skipped: int = 0  # undecodable images left out of the last ``image_batches`` pass

    def prompts(self, tokenizer, text_len: int) -> np.ndarray:
        """int32 [C * T, text_len]: row c * T + t is template t filled with class c."""
        return tokenizer([t.replace("{}", c) for c in self.classnames for t in self.templates], text_len)

    def image_batches(self, image_size: int, batch_size: int, rank: int = 0,
                      world: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(float32 [b, 3, S, S] normalised images, int64 [b] labels); centre crop, no augmentation.
        Undecodable images are skipped and counted in ``skipped`` (this rank's files only).

        With ``world`` > 1 the files go to ranks in runs of ``batch_size`` (run i to rank i % world),
        and a rank reads only its own: every file is scored by exactly one rank, and with no
        undecodable images rank r gets batches r, r + world, ... of the single-process order."""
        self.skipped = 0
        imgs, labs = [], []
        for j, (f, y) in enumerate(zip(self.files, self.labels)):
            if (j // batch_size) % world != rank:
                continue
            try:
                imgs.append(decode_eval(f.read_bytes(), image_size))
            except DecodeError:
                self.skipped += 1
                continue
            labs.append(y)
            if len(imgs) == batch_size:
                yield normalize(np.stack(imgs)), np.array(labs, np.int64)
                imgs, labs = [], []
        if imgs:
            yield normalize(np.stack(imgs)), np.array(labs, np.int64)


def is_image(path: Path) -> bool:
    """An image file the evaluation reads, by its suffix in any case (ImageNet's val files end in .JPEG)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found" + (" (a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a {what} file: not UTF-8 text (byte {e.start})") from None
    return [ln.rstrip("\n\r") for ln in text.splitlines() if ln.strip()]


def class_folders(root: Path) -> list[Path]:
    """The classes of an ImageNet-style folder: its sub-folders, in sorted order (the labels' order)."""
    return sorted(p for p in root.iterdir() if p.is_dir())


def load_zeroshot(val_dir, classnames_file=None, templates_file=None, limit: Optional[int] = None) -> ZeroShotSet:
    """Index ``val_dir``; UserError naming the path for a missing folder/file or a count mismatch.
    ``limit``: at most this many images, evenly spaced over the files in class-folder order (every class
    keeps its share, and the same subset every time)."""
    root = Path(val_dir)
    if not root.is_dir():
        raise UserError(f"{root}: zero-shot val folder not found")
    folders = class_folders(root)
    if not folders:
        raise UserError(f"{root}: no class folders (expected val/CLASS/*.jpg)")
    if classnames_file:
        lines = _read_lines(Path(classnames_file), "class-name")
        if len(lines) != len(folders):
            raise UserError(f"{classnames_file}: {len(lines)} class names for {len(folders)} folders in {root}")
        names = []
        for ln, folder in zip(lines, folders):
            if "\t" in ln:
                wnid, name = ln.split("\t", 1)
                if wnid != folder.name:
                    raise UserError(f"{classnames_file}: {wnid!r} does not match folder {folder.name!r} "
                                    "(lines must follow the sorted folder order)")
                ln = name
            names.append(ln.strip())
    else:
        names = [f.name.replace("_", " ") for f in folders]
    templates = _read_lines(Path(templates_file), "templates") if templates_file else list(DEFAULT_TEMPLATES)
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise UserError(f"{templates_file}: template {bad[0]!r} has no '{{}}' for the class name")
    files, labels = [], []
    for y, folder in enumerate(folders):
        for f in sorted(folder.iterdir()):
            if is_image(f):
                files.append(f)
                labels.append(y)
    if not files:
        raise UserError(f"{root}: no images in the class folders")
    if limit is not None and limit < len(files):
        keep = np.linspace(0, len(files) - 1, limit).round().astype(int)  # distinct: the step is above 1
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    return ZeroShotSet(names, templates, len(files), files, labels)


def class_embeddings(prompt_emb: np.ndarray, n_classes: int, n_templates: int) -> np.ndarray:
    """[C*T, D] prompt embeddings -> [C, D]: mean over templates of the normalised embeddings,
    normalised again (CLIP's prompt ensembling)."""
    e = prompt_emb / np.linalg.norm(prompt_emb, axis=-1, keepdims=True)
    e = e.reshape(n_classes, n_templates, -1).mean(axis=1)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def top1(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose most similar class is the label (embeddings need not be normalised)."""
    return top1_from_logits(image_emb @ class_emb.T, labels)


def top1_from_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.argmax(logits, axis=-1) == labels).mean())


def top1_percent(zs: ZeroShotSet, tokenizer, text_len: int, image_size: int, batch_size: int,
                 encode_text: Callable[[np.ndarray], np.ndarray], encode_image: Callable[[np.ndarray], np.ndarray],
                 rank: int = 0, world: int = 1,
                 total: Callable[[np.ndarray], np.ndarray] = lambda counts: counts) -> float:
    """Zero-shot top-1 in percent of ``zs`` (CLIP's protocol) given a model's two encoders.

    ``encode_text``: int32 [b, text_len] -> [b, D]; ``encode_image``: float32 [b, 3, S, S] -> [b, D]
    (numpy in and out, normalised or not). This process scores its ``rank`` share of the images;
    ``total`` sums the float64 [correct, seen] counts over processes (identity for one)."""
    prompts = zs.prompts(tokenizer, text_len)
    emb = np.concatenate([encode_text(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)])
    classes = class_embeddings(emb.astype(np.float32), len(zs.classnames), len(zs.templates))
    counts = np.zeros(2, np.float64)
    for images, labels in zs.image_batches(image_size, batch_size, rank, world):
        pred = np.argmax(encode_image(images) @ classes.T, axis=-1)
        counts += [(pred == labels).sum(), len(labels)]
    correct, seen = total(counts)
    return 100.0 * correct / max(1.0, seen)
