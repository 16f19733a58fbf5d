"""The published runs the accuracy law is fitted to, read from ``costmodels/data/``.

Every accuracy is read from a CSV row (file + row key) at load time, never typed here; this file
only says which rows are used and what each run *was* (encoder, tokens, text length, samples,
fine-tune stages), citing the row or paper that states it. Duplicates across sources (the same
run printed in the paper, the READMEs and the open_clip tables) are used once.

Units: samples seen (not steps); image tokens = patch tokens the image tower sees after
reduction, no class token (CLIPA's "I50" = 49 patches + 1 class token, data/README.md);
text length in tokens; accuracy = zero-shot ImageNet-1k top-1 in percent.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
PUB = "published_clipa_results.csv"
RES = "ext_clipa_results.csv"
INV = "ext_clipa_inverse_scaling.csv"
BASE = "published_openclip_baselines.csv"
SCALING = "ext_scaling_laws_zeroshot_results.csv"  # copy of shared/data/extended/scaling_laws_zeroshot_results.csv
FILES = (PUB, RES, INV, BASE, SCALING)


@dataclass(frozen=True)
class Run:
    """One published run: ``features`` is an accuracy_law.RunFeatures, ``family`` 'clipa' or 'openclip'."""

    name: str
    features: object
    top1: float
    family: str
    source: str


@dataclass(frozen=True)
class MaskDrop:
    """A published fine-tune masking drop (points) at 50% tokens kept, fine-tune F samples @224."""

    encoder: str
    samples: float
    drop: float
    source: str


@dataclass(frozen=True)
class TextDrop:
    """A published text-length drop (points): pre-training at ``text_len`` tokens (``reduction``)
    instead of 32, both followed by the same fine-tune at 224 px and 32 tokens."""

    encoder: str
    text_len: int
    reduction: str
    drop: float
    source: str


@functools.lru_cache(maxsize=None)
def read_rows(fname: str, key: str) -> dict[str, dict]:
    """Rows of ``data/fname`` keyed by column ``key``; read once per process (cached, so read-only)."""
    with open(DATA / fname, newline="") as fh:
        rows = list(csv.reader(fh))
    head, out = rows[0], {}
    for r in rows[1:]:
        # published_clipa_results.csv leaves the commas in "CLIPA-B/16(I50,T16) pretrain" unquoted:
        # surplus fields belong to the first column (the run name), never to the numbers after it.
        extra = len(r) - len(head)
        if extra > 0:
            r = [",".join(r[:extra + 1])] + r[extra + 1:]
        d = dict(zip(head, r))
        out[d[key]] = d
    return out


def value(fname: str, key: str, row: str, col: str) -> float:
    """A number from a data file, e.g. value(PUB, 'run', 'CLIPA-v2 ...', 'zero_shot_in1k_top1')."""
    return float(read_rows(fname, key)[row][col].strip().lstrip("~"))


# CLIPA-v1 pre-training length: "6 epochs" of LAION-400M = 2.56B samples (CLIPA-v2 paper Table 1,
# ext_clipa_results.csv row 10/42); published_clipa_results.csv rounds it to "2.4e9 (6 epochs)".
V1_PRETRAIN = 2.56e9
# CLIPA-v1 fine-tune: --train-num-samples 131072000 (ext_clipa_results.csv rows 40-42).
V1_FT = 131_072_000
# CLIPA-v2: 12.8B pre-training, 512M @224 with 30% random mask, 128M @336 with 40% mask
# (ext_clipa_results.csv rows 2, 5, 8, 9: CLIPA-v2 paper Table 4 and JAX unmask_tuning configs).
V2_PRETRAIN, V2_FT224, V2_FT336 = 12.8e9, 512e6, 128e6
# CLIPA-v2 Tables 1 and 3: the "CLIPA-v1" H/14 fine-tune is 128M @224 unmasked (ext_clipa_inverse_scaling row 10).
T1_FT = 128e6


def _clipa_runs() -> list[Run]:
    from clipa.costmodels.accuracy_law import FinetuneStage as FT, RunFeatures as RF

    def h_ft224(samples, mask):  # H/14 @224: 256 patches, floor(256 * (1 - mask)) kept (recipe.Stage.image_tokens)
        return FT(224, int(256 * (1 - mask) + 1e-9), samples, 32, mask)

    h_ft336 = FT(336, int(576 * 0.6 + 1e-9), V2_FT336, 32, 0.4)
    top = "zero_shot_in1k_top1"
    runs: list[tuple[str, object, str, str, str]] = [
        # name, features, file, row key, column  (file key column: PUB 'run', RES/INV 'row_id')
        # CLIPA-v1 on LAION-400M. Text reduction: ext_clipa_results rows 40-42 (B/16 truncation,
        # L/16 syntax); fine-tune text length 16/16/32 (same rows, ft_text_len).
        ("CLIPA-B/16(I50,T16) pretrain", RF("B/16", "laion-400m", 49, 16, V1_PRETRAIN, text_reduction="truncate"), PUB, top, ""),
        ("CLIPA-B/16(I50,T16) finetuned", RF("B/16", "laion-400m", 49, 16, V1_PRETRAIN, text_reduction="truncate",
                                             finetune=(FT(224, 196, V1_FT, 16),)), PUB, top, ""),
        ("CLIPA-L/16(I17,T16) pretrain", RF("L/16", "laion-400m", 16, 16, V1_PRETRAIN), PUB, top, ""),
        ("CLIPA-L/16(I17,T16) finetuned", RF("L/16", "laion-400m", 16, 16, V1_PRETRAIN,
                                             finetune=(FT(224, 196, V1_FT, 16),)), PUB, top, ""),
        ("CLIPA-L/16(I37,T8) pretrain", RF("L/16", "laion-400m", 36, 8, V1_PRETRAIN), PUB, top, ""),
        ("CLIPA-L/16(I37,T8) finetuned", RF("L/16", "laion-400m", 36, 8, V1_PRETRAIN,
                                            finetune=(FT(224, 196, V1_FT, 32),)), PUB, top, ""),
        # CLIPA-v2 pre-training only (clipa_jax README): 70 px = 25 tokens, 84 px = 36 tokens, text 8 syntax.
        ("CLIPA-v2 H/14 70 T8 LAION-2B pretrain", RF("H/14", "laion-2b", 25, 8, V2_PRETRAIN), PUB, top, ""),
        ("CLIPA-v2 H/14 84 T8 LAION-2B pretrain", RF("H/14", "laion-2b", 36, 8, V2_PRETRAIN), PUB, top, ""),
        ("CLIPA-v2 L/14 84 T8 DataComp pretrain", RF("L/14", "datacomp-1b", 36, 8, V2_PRETRAIN), PUB, top, ""),
        ("CLIPA-v2 H/14 84 T8 DataComp pretrain", RF("H/14", "datacomp-1b", 36, 8, V2_PRETRAIN), PUB, top, ""),
        # CLIPA-v2 fine-tuned (Table 4 / README).
        ("CLIPA-v2 H/14 LAION-2B 84+224", RF("H/14", "laion-2b", 36, 8, V2_PRETRAIN,
                                             finetune=(h_ft224(V2_FT224, 0.3),)), PUB, top, ""),
        ("CLIPA-v2 H/14 LAION-2B 84+224+336", RF("H/14", "laion-2b", 36, 8, V2_PRETRAIN,
                                                 finetune=(h_ft224(V2_FT224, 0.3), h_ft336)), PUB, top, ""),
        ("CLIPA-v2 H/14 DataComp 70+224", RF("H/14", "datacomp-1b", 25, 8, V2_PRETRAIN,
                                             finetune=(h_ft224(V2_FT224, 0.3),)), PUB, top, ""),
        ("CLIPA-v2 H/14 DataComp 84+224", RF("H/14", "datacomp-1b", 36, 8, V2_PRETRAIN,
                                             finetune=(h_ft224(V2_FT224, 0.3),)), PUB, top, ""),
        ("CLIPA-v2 H/14 DataComp 84+224+336", RF("H/14", "datacomp-1b", 36, 8, V2_PRETRAIN,
                                                 finetune=(h_ft224(V2_FT224, 0.3), h_ft336)), PUB, top, ""),
        # CLIPA-v2 paper Table 1: CLIPA-v1 recipe scaled to H/14 (84 px, 8 text tokens; the text
        # reduction is not printed there: CLIPA's T8 runs use syntax masking, the law's default).
        ("CLIPA H/14 LAION-400M 2.56B+128M (v2 Table 1)", RF("H/14", "laion-400m", 36, 8, 2.56e9,
                                                            finetune=(h_ft224(T1_FT, 0.0),)), RES, "11", "in1k_zeroshot_top1"),
        ("CLIPA H/14 LAION-2B 2.56B+128M (v2 Table 1)", RF("H/14", "laion-2b", 36, 8, 2.56e9,
                                                          finetune=(h_ft224(T1_FT, 0.0),)), RES, "12", "in1k_zeroshot_top1"),
        ("CLIPA H/14 LAION-2B 12.8B+128M (v2 Table 1)", RF("H/14", "laion-2b", 36, 8, V2_PRETRAIN,
                                                          finetune=(h_ft224(T1_FT, 0.0),)), RES, "13", "in1k_zeroshot_top1"),
        # CLIPA-v2 paper Table 3 fine-tune ablations after 12.8B@84 on LAION-2B (cases 1, 3, 4;
        # case 2 and 5 are the Table 4 runs above, the CLIPA-v1 row is Table 1's 77.9).
        ("CLIPA-v2 Table 3 case 1: 128M@224 mask 30%", RF("H/14", "laion-2b", 36, 8, V2_PRETRAIN,
                                                        finetune=(h_ft224(128e6, 0.3),)), INV, "11", "value"),
        ("CLIPA-v2 Table 3 case 3: 640M@224 mask 30%", RF("H/14", "laion-2b", 36, 8, V2_PRETRAIN,
                                                        finetune=(h_ft224(640e6, 0.3),)), INV, "13", "value"),
        ("CLIPA-v2 Table 3 case 4: 640M@336 mask 40%", RF("H/14", "laion-2b", 36, 8, V2_PRETRAIN,
                                                        finetune=(FT(336, int(576 * 0.6 + 1e-9), 640e6, 32, 0.4),)),
         INV, "14", "value"),
    ]
    out = []
    for name, feats, fname, a, b in runs:
        if fname == PUB:
            row = read_rows(PUB, "run")[name]
            out.append(Run(name, feats, float(row[a]), "clipa", f"{PUB}: {row['source']}"))
        else:
            row = read_rows(fname, "row_id")[a]
            out.append(Run(name, feats, float(row[b]), "clipa", f"{fname} row {a}: {row['source'][:90]}"))
    return out


# scaling-laws-openclip architecture names -> clipa encoder registry names (B/32, RN* not registered).
_ARCH = {"ViT-B-16": "B/16", "ViT-L-14": "L/14", "ViT-H-14": "H/14", "ViT-g-14": "g/14"}
_DATASET = {"LAION-400M": "laion-400m", "LAION-2B": "laion-2b", "DataComp-1B": "datacomp-1b"}
# open_clip trains full-token: 224 px, 77 text tokens truncated (open_clip tokenizer context length).
_OC_TEXT = 77


def _full_tokens(encoder: str) -> int:
    from clipa import encoders
    return encoders.get(encoder).vision.tokens(224)


def _openclip_runs() -> list[Run]:
    """Full-token OpenCLIP runs: the scaling-law study (arXiv 2212.07143) + open_clip baselines not in it."""
    from clipa.costmodels.accuracy_law import RunFeatures as RF

    out: list[Run] = []
    with open(DATA / SCALING, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["downstream_dataset"] != "imagenet1k" or r["arch"] not in _ARCH or r["upstream_dataset"] not in _DATASET:
                continue
            enc, ds, s = _ARCH[r["arch"]], _DATASET[r["upstream_dataset"]], float(r["samples_seen"])
            out.append(Run(f"OpenCLIP {enc} {r['upstream_dataset']} {r['samples_seen_pretty']} ({r['name']})",
                           RF(enc, ds, _full_tokens(enc), _OC_TEXT, s, text_reduction="truncate"),
                           round(100 * float(r["acc1"]), 2), "openclip", f"{SCALING}: {r['name']}"))
    with open(DATA / BASE, newline="") as fh:
        for r in csv.DictReader(fh):
            enc = _ARCH.get("ViT-" + r["model"].removeprefix("ViT-").replace("/", "-"))
            ds = _DATASET.get(r["dataset"])
            try:
                s = float(r["samples_seen"].split()[0])
            except (ValueError, IndexError):
                continue  # blank: samples not stated, not guessed
            if s < 1e6:
                continue  # "32 epochs": a count of passes, not samples; not converted by guessing a set size
            if enc is None or ds is None:
                continue
            # The same checkpoint is in the scaling-law table with a slightly different count
            # (e.g. H/14 laion2b_s32b: 32e9 here, 34.7e9 there): keep one.
            if any(o.features.encoder == enc and o.features.dataset == ds
                   and abs(o.features.samples / s - 1) < 0.15 for o in out):
                continue
            out.append(Run(f"OpenCLIP {enc} {r['dataset']} {r['samples_seen'].split()[0]}",
                           RF(enc, ds, _full_tokens(enc), _OC_TEXT, s, text_reduction="truncate"),
                           float(r["zero_shot_in1k_top1"]), "openclip", f"{BASE}: {r['source']}"))
    return out


def runs() -> list[Run]:
    """All published runs used by the fit (CLIPA first)."""
    return _clipa_runs() + _openclip_runs()


def mask_drops() -> list[MaskDrop]:
    """CLIPA-v2 Fig. 2 text: keeping 50% of tokens in a 128M @224 fine-tune costs H/14 0.4 ... S/16 1.8 points."""
    out = []
    for rid, r in read_rows(INV, "row_id").items():
        if r["experiment"].startswith("CLIPA-v2 inverse scaling law in fine-tuning"):
            samples = float(r["samples"].rstrip("M")) * 1e6
            out.append(MaskDrop(r["model"], samples, float(r["drop_vs_baseline"]), f"{INV} row {rid}"))
    return out


def text_drops() -> list[TextDrop]:
    """CLIPA paper Fig. 7 (third-party reading, ext_clipa_inverse_scaling.csv row 32): B/16 pre-trained
    with 4 syntax-masked text tokens loses ~3.0 points after the 0.36-epoch fine-tune at 32 tokens.
    Only the syntax row is an observation: the truncate/random/block rows set the law's fixed
    multipliers relative to it (accuracy_model.CONSTANTS)."""
    r = read_rows(INV, "row_id")["32"]
    return [TextDrop(r["model"], int(r["text_len"]), "syntax", float(r["value"].strip().lstrip("~")), f"{INV} row 32")]


def fingerprint() -> str:
    """Hash of the data files the fit reads: a stored fit is stale when this changes."""
    import hashlib

    h = hashlib.sha256()
    for f in FILES:
        h.update((DATA / f).read_bytes())
    return h.hexdigest()[:16]
