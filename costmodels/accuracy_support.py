"""What the accuracy law was fitted on, and how far a run lies outside it.

``Support.from_runs`` records, from the CLIPA runs of a fit (the OpenCLIP runs are full-token, a
different recipe), the encoders, pre-training samples, image tokens, text lengths and reductions,
fine-tune schedules and datasets it saw, and at which encoder each was seen. ``Support.check``
returns one ``Flag`` per axis on which a run lies outside (none when inside): a short string for the
user and what the law adds to the prediction's variance for it:

- a setting seen only at other encoder sizes (e.g. 16 syntax-masked text tokens, seen only at
  L/16): the law carries its effect to this size along an inverse-scaling exponent fitted across
  all settings; each setting's own exponent is uncertain by DELTA, so the doubt is DELTA x the
  setting's effect x the log-size distance to the nearest encoder that saw it;
- a setting beyond every CLIPA run (fewer tokens or shorter text than any, more or fewer
  pre-training samples, a longer fine-tune, another resolution or a heavier mask): DELTA x its
  effect beyond the nearest setting this encoder saw;
- an encoder beyond the CLIPA runs' sizes: KAPPA x the log-size distance (the forms' own spread
  and parameter uncertainty grow too); KAPPA is set on validation (leave-one-encoder-out:
  accuracy_validate.weigh);
- a reduction no run used (text random/block, image masks in pre-training) or a dataset without a
  CLIPA run: named only, their published readings (accuracy_model.CONST_SD) and the OpenCLIP runs
  carry their uncertainty.

"Effect" is the change in the mixture's predicted top-1 when the setting is replaced by the nearest
one this encoder's own runs had (or the law's zero point: 32 text tokens, full image tokens, no
fine-tune, LAION-2B, when it had none): ``Flag.ref``, applied by ``AccuracyLaw.doubt``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from clipa.costmodels import accuracy_model as am

KAPPA = 0.0  # default only: the stored fit carries the validated value (accuracy_validate.weigh)
# A setting's own inverse-scaling exponent is uncertain by DELTA: CLIPA-v2 Fig. 2's masking drops
# (H/14 0.4, L/16 0.8, B/16 1.1, S/16 1.8 points; ext_clipa_inverse_scaling.csv rows 16-19) give
# local exponents 0.35 (S-B), 0.25 (B-L) and 0.95 (L-H) between neighbours: a spread of 0.35.
DELTA = 0.35
SAME = 0.05  # samples within 5% are the same schedule (the papers' "128M" is 131,072,000 in configs)


@dataclass(frozen=True)
class Flag:
    """One axis outside the fitted data: ``text`` for the user; ``distance`` (log units) scaled by
    KAPPA; ``term`` / ``ref`` / ``scale``: the setting, what replaces it for its effect, and the
    multiplier of DELTA x effect (log-size distance, or 1 beyond every run)."""

    text: str
    distance: float = 0.0
    term: Optional[str] = None  # samples | tokens | text | finetune | dataset
    ref: Optional[tuple] = None  # ((RunFeatures field, value), ...)
    scale: float = 0.0


def _samples(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _ft_label(stages: Sequence) -> str:
    return " + ".join(f"{_samples(s[1])}@{s[0]}" + (f" ({s[2]:.0%} mask)" if s[2] else "") for s in stages)


def _logn(enc: str) -> float:
    return am.enc_info(enc)[0]


def _encs(names) -> str:
    return " and ".join(sorted(set(names), key=lambda n: (_logn(n), n)))  # name breaks ties: set order is per-process


def _same_ft(a, b) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and abs(x[2] - y[2]) < 1e-3 and abs(x[1] / y[1] - 1) <= SAME
                                    for x, y in zip(a, b))


@dataclass
class Support:
    encoders: dict[str, float] = field(default_factory=dict)  # CLIPA encoder -> log n
    samples: tuple[float, float] = (math.inf, 0.0)  # pre-training samples, CLIPA runs
    tokens: dict[int, list[str]] = field(default_factory=dict)  # pre-training image tokens -> encoders
    text: dict[str, list[str]] = field(default_factory=dict)  # "len/reduction" (len < 32) -> encoders
    finetunes: list[tuple[list, list[str]]] = field(default_factory=list)  # [([[px, samples, mask, text]], encoders)]
    ft_samples: tuple[float, float] = (math.inf, 0.0)
    ft_sizes: list[int] = field(default_factory=list)
    ft_mask: float = 0.0
    datasets: dict[str, list[str]] = field(default_factory=dict)  # dataset -> encoders with a CLIPA run
    all_datasets: list[str] = field(default_factory=list)  # datasets with any run

    @classmethod
    def from_runs(cls, runs, drops=(), texts=()) -> "Support":
        s = cls()
        for r in runs:
            f = r.features
            if f.dataset not in s.all_datasets:
                s.all_datasets.append(f.dataset)
            if r.family != "clipa":
                continue
            s.encoders[f.encoder] = _logn(f.encoder)
            s.samples = (min(s.samples[0], f.samples), max(s.samples[1], f.samples))
            s.tokens.setdefault(f.image_tokens, []).append(f.encoder)
            if f.text_len < am.L_REF:
                s.text.setdefault(f"{f.text_len}/{f.text_reduction}", []).append(f.encoder)
            s.datasets.setdefault(f.dataset, []).append(f.encoder)
            stages = [[st.image_size, st.samples, round(st.mask_ratio, 3), st.text_len] for st in f.finetune]
            if stages:
                hit = next((e for st, e in s.finetunes if _same_ft(st, stages)), None)
                if hit is None:
                    s.finetunes.append((stages, [f.encoder]))
                else:
                    hit.append(f.encoder)
            for size, n, m, _ in stages:
                s.ft_samples = (min(s.ft_samples[0], n), max(s.ft_samples[1], n))
                s.ft_mask = max(s.ft_mask, m)
                if size not in s.ft_sizes:
                    s.ft_sizes.append(size)
        for t in texts:  # a published text-length drop is a CLIPA pre-training at that length
            s.text.setdefault(f"{t.text_len}/{t.reduction}", []).append(t.encoder)
        return s

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()} | {
            "tokens": {str(k): v for k, v in self.tokens.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "Support":
        d = dict(d)
        d["tokens"] = {int(k): v for k, v in d["tokens"].items()}
        d["samples"], d["ft_samples"] = tuple(d["samples"]), tuple(d["ft_samples"])
        d["finetunes"] = [(st, e) for st, e in d["finetunes"]]
        return cls(**d)

    def longest_inside(self, grid) -> Optional[float]:
        """The longest pre-training of ``grid`` within the CLIPA runs' lengths (None: none is)."""
        lo, hi = self.samples
        return max((n for n in grid if lo * (1 - SAME) <= n <= hi * (1 + SAME)), default=None)

    def could_be_inside(self, f) -> bool:
        """A cheap necessary condition for ``check(f)`` to be empty: a dataset with a CLIPA run, an
        encoder size and a pre-training length within the CLIPA runs'."""
        if f.dataset not in self.datasets or not self.encoders:
            return False
        logn, (lo, hi) = _logn(f.encoder), self.samples
        return (min(self.encoders.values()) - 1e-9 <= logn <= max(self.encoders.values()) + 1e-9
                and lo * (1 - SAME) <= f.samples <= hi * (1 + SAME))

    # -- what this encoder's own runs had (the reference of a setting's effect) ----------------

    def _here(self, encs: list[str], enc: str) -> bool:
        return any(abs(_logn(e) - _logn(enc)) < 1e-9 for e in encs)  # L/14 and L/16: the same weights

    def _ref_tokens(self, f) -> tuple:
        seen = [t for t, e in self.tokens.items() if self._here(e, f.encoder)]
        if not seen:
            return (("image_tokens", am.enc_info(f.encoder)[1]), ("image_reduction", "resize"))
        return (("image_tokens", min(seen, key=lambda t: (abs(math.log(t / f.image_tokens)), t))),
                ("image_reduction", "resize"))

    def _ref_text(self, f) -> tuple:
        seen = [k.split("/") for k, e in self.text.items() if self._here(e, f.encoder)]
        if not seen:
            return (("text_len", am.L_REF),)
        L, red = min(seen, key=lambda k: (abs(math.log(int(k[0]) / f.text_len)), k[1] != f.text_reduction, int(k[0])))
        return (("text_len", int(L)), ("text_reduction", red))

    def _ref_finetune(self, f) -> tuple:
        seen = [st for st, e in self.finetunes if self._here(e, f.encoder)]
        if not seen:
            return (("finetune", ()),)
        total = sum(s.samples for s in f.finetune)
        st = min(seen, key=lambda st: (abs(math.log(sum(x[1] for x in st) / total)), len(st)))
        return (("finetune", _stages(f.encoder, st)),)

    def _ref_dataset(self, f) -> tuple:
        here = [d for d, e in self.datasets.items() if self._here(e, f.encoder)]
        return (("dataset", "laion-2b" if "laion-2b" in here or not here else here[0]),)

    def _seen_at(self, what: str, encs: list[str], f, term: str, ref: tuple) -> list[Flag]:
        """A setting seen only at other encoder sizes; its doubt scales with the log-size distance."""
        d = min(abs(_logn(f.encoder) - _logn(e)) for e in encs)
        return [] if d < 1e-9 else [Flag(f"{what}: seen only at {_encs(encs)}", 0.0, term, ref, d)]

    # -- the checks ------------------------------------------------------------------------------

    def check(self, f) -> list[Flag]:
        """The axes on which ``f`` (RunFeatures) leaves the fitted data; empty when inside."""
        if f.dataset not in self.all_datasets:
            return [Flag(f"dataset {f.dataset}: no published run")]
        if not self.encoders:
            return [Flag("no CLIPA run in the fit")]
        out: list[Flag] = []
        logn = _logn(f.encoder)
        big = max(self.encoders, key=self.encoders.get)
        small = min(self.encoders, key=self.encoders.get)
        if logn > self.encoders[big] + 1e-9:
            d = logn - self.encoders[big]
            out.append(Flag(f"encoder {f.encoder} beyond {big} (largest CLIPA run; {math.exp(d):.1f}x its weights)", d))
        elif logn < self.encoders[small] - 1e-9:
            d = self.encoders[small] - logn
            out.append(Flag(f"encoder {f.encoder} below {small} (smallest CLIPA run; {math.exp(-d):.2f}x its weights)", d))
        lo, hi = self.samples
        if f.samples > hi * (1 + SAME) or f.samples < lo * (1 - SAME):
            edge = hi if f.samples > hi else lo
            side = "beyond" if f.samples > hi else "below"
            word = "longest" if f.samples > hi else "shortest"
            d = abs(math.log(f.samples / edge))
            out.append(Flag(f"pre-training samples {_samples(f.samples)} {side} {_samples(edge)} ({word} CLIPA "
                            "pre-training)", d, "samples", (("samples", edge),), 1.0))
        out += self._tokens(f)
        out += self._text(f)
        if f.image_reduction != "resize":
            out.append(Flag(f"pre-training image reduction {f.image_reduction}: no published run "
                            "(its cost is CLIPA Fig. 4's L/16 reading)"))
        out += self._finetune(f)
        if f.dataset not in self.datasets:
            out.append(Flag(f"dataset {f.dataset}: no CLIPA run (only full-token OpenCLIP runs)"))
        else:
            out += self._seen_at(f"dataset {f.dataset}", self.datasets[f.dataset], f, "dataset", self._ref_dataset(f))
        return out

    def _tokens(self, f) -> list[Flag]:
        t, full = f.image_tokens, am.enc_info(f.encoder)[1]
        seen = sorted(self.tokens)
        if t in self.tokens:
            return self._seen_at(f"pre-training image tokens {t}", self.tokens[t], f, "tokens", self._ref_tokens(f))
        if t >= full:
            return []  # full tokens: the law's reference, pinned by the full-token runs
        if seen[0] < t < seen[-1]:
            return [Flag(f"pre-training image tokens {t}: not a CLIPA setting (between "
                         f"{max(x for x in seen if x < t)} and {min(x for x in seen if x > t)})")]
        # Beyond every CLIPA run: doubt the effect beyond the nearest count a run had, and that
        # count's own if only other encoders had it.
        edge = seen[0] if t < seen[0] else seen[-1]
        if t < edge:
            text, d = f"pre-training image tokens {t} below {edge} (fewest in a CLIPA run)", math.log(edge / t)
        else:
            text = f"pre-training image tokens {t}: between CLIPA's {seen[0]}-{edge} and full tokens ({full}), where no run trained"
            d = min(math.log(t / edge), math.log(full / t))
        at_edge = self._seen_at(f"  (nearest: {edge} tokens)", self.tokens[edge], f, "tokens",
                                self._ref_tokens(_with(f, image_tokens=edge)))
        return [Flag(text, d, "tokens_x", (("image_tokens", edge), ("image_reduction", "resize")), 1.0)] + [
            Flag("", fl.distance, fl.term, fl.ref, fl.scale) for fl in at_edge]

    def _text(self, f) -> list[Flag]:
        if f.text_len >= am.L_REF:
            return []
        out = []
        if f.text_reduction not in {k.split("/")[1] for k in self.text}:
            out.append(Flag(f"text reduction {f.text_reduction}: no published run (its cost is CLIPA Fig. 7's B/16 reading)"))
        shortest = min(int(k.split("/")[0]) for k in self.text)
        key = f"{f.text_len}/{f.text_reduction}"
        same_len = [e for k, e in self.text.items() if int(k.split("/")[0]) == f.text_len]
        if f.text_len < shortest:
            edge = min((k for k in self.text if int(k.split("/")[0]) == shortest),
                       key=lambda k: k.split("/")[1] != f.text_reduction)
            out.append(Flag(f"text_len {f.text_len} below {shortest} (shortest in a CLIPA run)",
                            math.log(shortest / f.text_len), "text_x",
                            (("text_len", shortest), ("text_reduction", edge.split("/")[1])), 1.0))
            g = _with(f, text_len=shortest, text_reduction=edge.split("/")[1])
            out += [Flag("", fl.distance, fl.term, fl.ref, fl.scale)
                    for fl in self._seen_at("", self.text[edge], g, "text", self._ref_text(g))]
        elif key in self.text:
            out += self._seen_at(f"text_len {f.text_len} with {f.text_reduction}", self.text[key], f, "text",
                                 self._ref_text(f))
        elif same_len:  # the length was run with another reduction: its cost here is a published reading
            out += self._seen_at(f"text_len {f.text_len}", [e for es in same_len for e in es], f, "text",
                                 self._ref_text(f))
        else:
            lens = sorted({int(k.split("/")[0]) for k in self.text})
            out.append(Flag(f"text_len {f.text_len}: not a CLIPA setting (CLIPA runs used {lens})"))
        return out

    def _finetune(self, f) -> list[Flag]:
        stages = [[st.image_size, st.samples, round(st.mask_ratio, 3), st.text_len] for st in f.finetune]
        if not stages:
            return []
        out = []
        lo, hi = self.ft_samples
        for size, n, m, _ in stages:
            if n > hi * (1 + SAME):
                out.append((f"fine-tune {_samples(n)} beyond {_samples(hi)} (longest CLIPA fine-tune)", math.log(n / hi)))
            elif n < lo * (1 - SAME):
                out.append((f"fine-tune {_samples(n)} below {_samples(lo)} (shortest CLIPA fine-tune)", math.log(lo / n)))
            if size not in self.ft_sizes:
                near = min(self.ft_sizes, key=lambda x: abs(math.log(size / x)))
                out.append((f"fine-tune at {size} px: CLIPA fine-tuned at {sorted(self.ft_sizes)}",
                            abs(math.log(size / near))))
            if m > self.ft_mask + 1e-9:
                out.append((f"fine-tune mask {m:.0%} beyond {self.ft_mask:.0%} (most in a CLIPA fine-tune)",
                            math.log((1 - self.ft_mask) / (1 - m))))
        if out:
            # Beyond every CLIPA schedule: doubt the effect beyond the nearest schedule a run had,
            # and that schedule's own if only other encoders had it.
            total = sum(x[1] for x in stages)
            near, encs = min(self.finetunes, key=lambda se: (abs(math.log(sum(x[1] for x in se[0]) / total)), len(se[0])))
            g = _with(f, finetune=_stages(f.encoder, near))
            return [Flag(t, d, "finetune_x", (("finetune", g.finetune),), 1.0) for t, d in out] + [
                Flag("", fl.distance, fl.term, fl.ref, fl.scale)
                for fl in self._seen_at("", encs, g, "finetune", self._ref_finetune(g))]
        hit = next((e for st, e in self.finetunes if _same_ft(st, stages)), None)
        if hit is None:
            return [Flag(f"fine-tune {_ft_label(stages)}: not a CLIPA schedule")]
        return self._seen_at(f"fine-tune {_ft_label(stages)}", hit, f, "finetune", self._ref_finetune(f))


def _stages(enc: str, stages) -> tuple:
    """Stored fine-tune stages [[px, samples, mask, text_len]] as FinetuneStages of ``enc``."""
    from clipa import encoders
    from clipa.costmodels.accuracy_law import FinetuneStage

    v = encoders.get(enc).vision
    return tuple(FinetuneStage(px, v.kept_tokens(px, m), n, tl, m) for px, n, m, tl in stages)


def _with(f, **kw):
    from dataclasses import replace

    return replace(f, **kw)
