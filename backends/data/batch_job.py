"""One batch of raw samples -> model-ready arrays; runs in a decoding worker process (or inline).

Every random choice of a sample (crop, jitter, mask, text subset) comes from a generator seeded by
(seed, rank, position of the sample in the rank's stream), so a batch is the same whichever worker
decodes it and whether the run was resumed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np

from clipa import reductions
from clipa.backends.data import decode, text_reduction, tokenizer
from clipa.backends.data.webdataset_io import IMAGE_EXTS, POS_EXT, TEXT_EXT
from clipa.recipe import AugmentSpec


@dataclass(frozen=True)
class JobConfig:
    image_size: int                  # px
    augment: AugmentSpec
    mask_kind: Optional[str]         # None for a reduction without keep indices (resize)
    grid_side: int                   # patches per side at image_size
    keep_tokens: int                 # K patch tokens kept (mask kinds)
    text_len: int                    # tokens incl. <start>/<end>
    text_kind: str
    seed: int
    rank: int
    spacy_model: Optional[str] = None
    draft: bool = True


def _caption_ids(cfg: JobConfig, tok, caption: str, pos: Optional[dict], rng) -> np.ndarray:
    red = reductions.TEXT.get(cfg.text_kind)
    if red.needs_pos:
        ids, prio = text_reduction.word_ids(tok, pos["words"], pos["prio"])
    else:
        ids, prio = tok.encode(caption), None
    kept = red.reduce(ids, cfg.text_len - 2, rng, prio)
    return tok.pack(kept, cfg.text_len)


def run(cfg: JobConfig, items: list[tuple[int, str, dict[str, bytes]]]) -> dict:
    """``items``: (stream position, sample name, {ext: bytes}). Returns ``image`` uint8 [n,H,W,3],
    ``text`` int32 [n,L], ``keep`` int32 [n,K] or None, ``failed``: [(index, name, reason)]."""
    tok = tokenizer.get()
    n, s = len(items), cfg.image_size
    images = np.zeros((n, s, s, 3), np.uint8)
    texts = np.zeros((n, cfg.text_len), np.int32)
    keep = np.zeros((n, cfg.keep_tokens), np.int32) if cfg.mask_kind else None
    captions = [it[2][TEXT_EXT].decode("utf-8", "replace").strip() for it in items]
    pos: list[Optional[dict]] = [None] * n
    if reductions.TEXT.get(cfg.text_kind).needs_pos:
        for i, it in enumerate(items):
            if POS_EXT in it[2]:
                try:
                    pos[i] = json.loads(it[2][POS_EXT])
                except ValueError:
                    pos[i] = None
        todo = [i for i in range(n) if pos[i] is None]
        if todo:
            from clipa.backends.data.syntax_prep import tag  # spaCy only when a shard was not prepared
            for i, t in zip(todo, tag([captions[i] for i in todo], cfg.spacy_model)):
                pos[i] = t
    failed = []
    for i, (position, name, members) in enumerate(items):
        if not captions[i]:  # nothing to contrast the image with: skipped like an undecodable image
            failed.append((i, name, "empty_caption"))
            continue
        rng = np.random.default_rng([cfg.seed, cfg.rank, position])
        data = next(members[e] for e in IMAGE_EXTS if e in members)
        try:
            images[i] = decode.decode_train(data, s, cfg.augment, rng, cfg.draft)
        except decode.DecodeError as e:
            failed.append((i, name, f"undecodable_image: {e}"))
            continue
        if keep is not None:
            keep[i] = reductions.IMAGE.get(cfg.mask_kind).keep_indices(cfg.grid_side, cfg.keep_tokens, rng)
        texts[i] = _caption_ids(cfg, tok, captions[i], pos[i], rng)
    return {"image": images, "text": texts, "keep": keep, "failed": failed}
