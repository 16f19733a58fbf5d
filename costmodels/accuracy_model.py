"""The accuracy law's model forms: one vectorised function, several plausible shapes.

Every form predicts zero-shot ImageNet-1k top-1 (percent) after each stage of a run::

    core(S)  = A - B * n**-alpha - C * (S_eff/1e9)**-beta [+ o for OpenCLIP runs] - strat * n**-gamma
    P_img(T) = Ki * n**-gamma   * ((256/T)**ci - 1)             image tokens (above 256: a small bonus)
    P_txt(L) = Kt * n**-gamma_t * m_red * ((32/L)**ct - 1)      text tokens (below L_MIN: the chord)
    top1     = dataset(core(S) - Q - R)

with n = vision-tower weights / 302M (L/16 = 1), T = image patch tokens seen (after resize or mask),
L = text tokens, S = samples seen so far (a fine-tune sample counts rho pre-training samples: it is
seen at full resolution). After pre-training the penalty P0 = P_img(T0) + P_txt(L0) splits into
Q = keep * P0, which no fine-tune removes, and R = P0 - Q; each fine-tune stage (F samples at T_k,
L_k) moves R towards its own penalty: R <- P_k + (R - P_k) * exp(-F/F0), only ever down. ``strat``
is the fixed extra cost of mask strategies, m_red the text reduction's multiplier (both published
readings: ``CONSTANTS``). Text and image penalties inverse-scale with their own exponents.

The published runs cannot tell some shapes apart (they fit about equally well inside the data and
disagree outside it), so the law is a mixture of forms (``FORMS``), each a choice of

- size:    "floor"    A fitted: accuracy saturates below 100% as the encoder grows;
           "nofloor"  A = 100: the error keeps falling as a power law in encoder size;
- dataset: "error"    the dataset scales the error 100 - top1 (DataComp's gain shrinks as accuracy grows);
           "points"   the dataset adds a constant number of points;
           "samples"  the dataset multiplies the effective samples (better data = more data);
- tokens:  "points"   a token penalty costs its points whatever the run;
           "relative" it costs in proportion to the run's error (E_REF points = face value): the
                      same shortfall in tokens hurts a weaker run (shorter, smaller, worse data) more.

One parameter vector (``PARAMS``) serves every form: a form fixes what it does not use (A = 100 for
"nofloor") and reads the dataset parameters its own way. Parameters named in ``CONSTANTS`` are not
fitted: they are published readings whose uncertainty enters the interval through ``CONST_SD``.

numpy only (planning imports no scipy, torch or jax).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from clipa import datasets, encoders, reductions

DATASETS = datasets.published()  # the ones with published runs
N_REF = 301_989_888  # L/16 vision-tower weights (encoders.py shapes): n = 1 at L/16
T_REF = 256  # image tokens of a /14 tower at 224 px: "full tokens" for the law
L_REF = 32  # CLIPA: 32 text tokens lose nothing against 77 (CLIPA paper; CLIPA-v2 fine-tunes at 32)
U_READ = math.log(32 / 4)  # the text-reduction multipliers are CLIPA Fig. 7's readings at 4 tokens
E_REF = 25.0  # points: the error at which a "relative" token penalty costs its face value
MAX_FT = 3  # fine-tune stages the vectorised model handles (CLIPA uses at most 2)
# Shortest text length of a CLIPA pre-training evaluation (CLIPA-v1 L/16 and CLIPA-v2, 8 tokens): the
# text penalty's shape is fitted down to here and continues along its tangent below it.
L_MIN = 8

# Text reductions multiply the text penalty, relative to syntax masking; image masks cost a fixed
# extra DELTA * n**-gamma * reduction / STRATEGY_REF_REDUCTION points against resizing, reduction =
# 1 - tokens / T_REF (the L/16 figures: 49 of 196 tokens = 1 - 49/256 of T_REF); linear in the
# reduction is an assumption. Both are published readings held by the registries (clipa/reductions.py).
TEXT_REDUCTIONS = reductions.TEXT.names()
IMAGE_REDUCTIONS = reductions.IMAGE.names()
STRATEGY_REF_REDUCTION = 1.0 - 49 / 256
# Fine-tune stages read truncated captions (CLIPA fine-tune scripts, ext_clipa_recipes.csv rows 31-37).
FT_TEXT_REDUCTION = "truncate"

FITTED = ("A", "ds_laion400m", "ds_datacomp1b", "openclip_offset", "lnB", "alpha", "lnC", "beta",
          "lnKi", "ci", "gamma", "lnKt", "ct", "gamma_t", "lnF0", "keep", "lnrho")
# Each reduction but the reference (the registries' first entry: syntax, resize) is one constant.
_READINGS = ([(f"mult_{r.name}", r.law_mult, r.law_mult_sd) for r in list(reductions.TEXT)[1:]]
             + [(f"delta_{r.name}", r.law_delta, r.law_delta_sd) for r in list(reductions.IMAGE)[1:]])
CONSTANTS = {k: v for k, v, _ in _READINGS}
CONST_SD = {k: sd for k, _, sd in _READINGS}
PARAMS = FITTED + tuple(CONSTANTS)
IDX = {k: i for i, k in enumerate(PARAMS)}


@dataclass(frozen=True)
class Form:
    size: str  # floor | nofloor
    dataset: str  # error | points | samples
    tokens: str  # power | log

    @property
    def name(self) -> str:
        return f"{self.size}/{self.dataset}/{self.tokens}"

    @property
    def free(self) -> tuple[str, ...]:
        """The fitted parameters of this form."""
        return tuple(k for k in FITTED if not (k == "A" and self.size == "nofloor"))

    def start_bounds_prior(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x0, lo, hi, prior mean, prior sd) over ``PARAMS``; fixed parameters have lo == hi.

        The priors are weak: they only keep a parameter the data cannot pin (a fine-tune's time
        constant when every run fine-tunes for the same length, a size exponent when one encoder is
        held out) at a plausible value instead of a bound. Units: points, exponents, log-scales,
        F0 in 1e8 samples.
        """
        spec = {  # name: (x0, lo, hi, prior mean, prior sd)
            "A": (90.0, 50.0, 100.0, 90.0, 10.0),
            "openclip_offset": (-3.0, -20.0, 20.0, 0.0, 10.0),
            "lnB": (math.log(10), -10.0, 10.0, math.log(10), 3.0),
            "alpha": (0.4, 0.02, 2.0, 0.4, 0.4),
            "lnC": (math.log(15), -10.0, 10.0, math.log(15), 3.0),
            "beta": (0.4, 0.02, 2.0, 0.4, 0.4),
            "lnKi": (0.0, -10.0, 10.0, 0.0, 3.0),
            "gamma": (0.5, 0.0, 3.0, 0.5, 0.5),
            "lnKt": (0.0, -10.0, 10.0, 0.0, 3.0),
            "gamma_t": (0.5, 0.0, 3.0, 0.5, 0.5),
            # A fine-tune converges within a few hundred million samples (CLIPA fine-tunes 131M).
            "lnF0": (math.log(0.5), -5.0, 5.0, math.log(0.5), 1.5),
            "keep": (0.2, 0.0, 0.9, 0.2, 0.3),
            # A fine-tune sample (full resolution) counts rho pre-training samples in the samples term.
            "lnrho": (math.log(2.0), 0.0, math.log(100.0), math.log(2.0), 1.5),
        }
        ds = {"error": (0.0, -2.0, 2.0, 0.0, 0.3), "points": (0.0, -30.0, 30.0, 0.0, 10.0),
              "samples": (0.0, -5.0, 5.0, 0.0, 2.0)}[self.dataset]
        spec["ds_laion400m"] = spec["ds_datacomp1b"] = ds
        # The text penalty may be as steep as the CLIPA pre-training evaluations ask (16 -> 8 tokens
        # costs L/16 several points before fine-tuning, while its 16-token fine-tune loses little);
        # below L_MIN it goes on along its tangent in log length, never steeper than at the data's edge.
        spec["ci"] = (1.0, 0.05, 3.0, 1.0, 1.0)
        spec["ct"] = (1.0, 0.05, 3.0, 1.0, 1.0)
        if self.size == "nofloor":
            spec["A"] = (100.0, 100.0, 100.0, 100.0, 1.0)
        for k, v in CONSTANTS.items():
            spec[k] = (v, v, v, v, CONST_SD[k])
        cols = np.array([spec[k] for k in PARAMS], float).T
        return cols[0], cols[1], cols[2], cols[3], cols[4]


FORMS = tuple(Form(s, d, t) for s in ("floor", "nofloor") for d in ("error", "points", "samples")
              for t in ("points", "relative"))
_DS_CODE = {"error": 0, "points": 1, "samples": 2}
_TOK_CODE = {"points": 0, "relative": 1}


@functools.lru_cache(maxsize=None)
def enc_info(name: str) -> tuple[float, int]:
    """(log n, patch tokens at 224 px) of an encoder."""
    v = encoders.get(name).vision
    params = v.depth * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim)  # attention + MLP weights
    return math.log(params / N_REF), v.tokens(224)


def design(feats: Sequence, family: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """RunFeatures -> arrays (m,) and (m, n_ft) for the vectorised model (n_ft: most fine-tune stages)."""
    m = len(feats)
    n_ft = max((len(f.finetune) for f in feats), default=0)
    d = {k: np.zeros(m) for k in ("logn", "T0", "L0", "S0", "red", "oc")}
    d["ds"] = np.zeros((m, len(DATASETS)))
    d["tred"] = np.zeros((m, len(TEXT_REDUCTIONS)))
    d["ired"] = np.zeros((m, len(IMAGE_REDUCTIONS)))
    for k in ("T", "L", "F"):
        d[k] = np.zeros((m, n_ft)) if k == "F" else np.ones((m, n_ft))
    for i, f in enumerate(feats):
        d["logn"][i] = enc_info(f.encoder)[0]
        d["T0"][i], d["L0"][i], d["S0"][i] = max(f.image_tokens, 1), max(f.text_len, 1), f.samples
        d["tred"][i, TEXT_REDUCTIONS.index(f.text_reduction)] = 1.0
        d["ired"][i, IMAGE_REDUCTIONS.index(f.image_reduction)] = 1.0
        # Reduction measured against T_REF like the token penalty, so equal tokens cost the same on L/14 and L/16.
        d["red"][i] = max(0.0, 1.0 - f.image_tokens / T_REF) / STRATEGY_REF_REDUCTION
        if f.dataset in DATASETS:
            d["ds"][i, DATASETS.index(f.dataset)] = 1.0
        d["oc"][i] = 1.0 if family is not None and family[i] == "openclip" else 0.0
        if len(f.finetune) > MAX_FT:
            raise ValueError(f"at most {MAX_FT} fine-tune stages, got {len(f.finetune)}")
        for j, s in enumerate(f.finetune):
            d["T"][i, j], d["L"][i, j], d["F"][i, j] = max(s.image_tokens, 1), max(s.text_len, 1), s.samples
    return d


def model(theta: np.ndarray, d: dict[str, np.ndarray], ds_code, tok_code) -> np.ndarray:
    """Accuracy after each stage: theta (k, p) -> (k, m, 1 + n_ft).

    ``ds_code`` and ``tok_code`` (scalars or (k,) integer arrays) select each row's dataset and
    token form (``_DS_CODE``, ``_TOK_CODE``), so rows of different forms are evaluated in one call.
    """
    th = np.atleast_2d(theta)
    k = th.shape[0]
    P = lambda name: th[:, IDX[name]][:, None]  # noqa: E731  (k, 1)
    dsc = np.broadcast_to(np.asarray(ds_code), (k,))[:, None]
    relative = (np.broadcast_to(np.asarray(tok_code), (k,)) == 1)[:, None]
    ds_par = th[:, [IDX["ds_laion400m"], IDX["ds_datacomp1b"]]] @ d["ds"][:, [0, 2]].T  # (k, m)
    m_err = np.where(dsc == 0, np.exp(ds_par), 1.0)
    add = np.where(dsc == 1, ds_par, 0.0)
    s_mult = np.where(dsc == 2, np.exp(ds_par), 1.0)
    logn = d["logn"]
    shrink = np.exp(-P("gamma") * logn)  # n**-gamma
    shrink_t = np.exp(-P("gamma_t") * logn)  # the text penalty's own inverse scaling
    mult = {r: P(f"mult_{r}") if i else 1.0 for i, r in enumerate(TEXT_REDUCTIONS)}
    mt0 = sum(mult[r] * d["tred"][:, i] for i, r in enumerate(TEXT_REDUCTIONS))
    strat = sum(P(f"delta_{r}") * d["ired"][:, i] for i, r in enumerate(IMAGE_REDUCTIONS) if i)
    base = (P("A") + P("openclip_offset") * d["oc"] - np.exp(P("lnB")) * np.exp(-P("alpha") * logn)
            - strat * d["red"] * shrink)
    Ki, ci, Kt, ct = np.exp(P("lnKi")), P("ci"), np.exp(P("lnKt")), P("ct")
    C, beta, F0, keep = np.exp(P("lnC")), P("beta"), np.exp(P("lnF0")) * 1e8, P("keep")
    rho = np.exp(P("lnrho"))

    def p_img(T):
        r = np.log(T_REF / T)  # > 0 below full tokens
        return np.where(r >= 0, Ki * shrink * np.expm1(ci * r), Ki * np.expm1(ci * r))  # above: a small bonus

    # In u = ln(L_REF / L) the text penalty is expm1(ct * u); below L_MIN it goes on along the chord
    # from L_REF: each further halving costs what an average halving from 32 to L_MIN tokens did.
    u_min = math.log(L_REF / L_MIN)

    def p_txt(L, mt):
        u = np.maximum(np.log(L_REF / L), 0.0)  # longer than L_REF: no penalty
        # The reductions' multipliers are read at 4 tokens; at 32 nothing is cut, so no reduction costs more.
        mt = 1.0 + (mt - 1.0) * np.minimum(u / U_READ, 1.0)
        shape = np.where(u > u_min, np.expm1(ct * u_min) * u / u_min, np.expm1(ct * np.minimum(u, u_min)))
        return Kt * shrink_t * mt * shape

    def top1(x, S, pen):
        core = x - C * (S * s_mult / 1e9) ** -beta
        # "relative": a penalty costs in proportion to the run's error (E_REF points = 1).
        core = core - np.where(relative, pen * (100.0 - core) / E_REF, pen)
        return 100.0 - m_err * (100.0 - core) + add

    S = d["S0"]
    P0 = p_img(d["T0"]) + p_txt(d["L0"], mt0)
    Q = keep * np.maximum(P0, 0.0)  # the part of the pre-training penalty no fine-tune removes
    R = P0 - Q  # the part fine-tuning moves towards the fine-tune stage's own penalty
    out = [top1(base, S, P0)]
    for j in range(d["F"].shape[1]):
        F = d["F"][:, j]
        Pk = p_img(d["T"][:, j]) + p_txt(d["L"][:, j], mult[FT_TEXT_REDUCTION])
        R = np.where(Pk < R, Pk + (R - Pk) * np.exp(-F / F0), R)
        S = S + rho * F
        out.append(top1(base, S, Q + R))
    return np.stack(np.broadcast_arrays(*out), axis=-1)


def form_codes(forms: Sequence[Form]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([_DS_CODE[f.dataset] for f in forms]), np.array([_TOK_CODE[f.tokens] for f in forms]))
