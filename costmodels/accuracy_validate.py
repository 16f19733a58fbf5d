"""How far the accuracy law can be trusted: held-out validation, the stored fit, the report and its plot.

Three ways of holding data out, each refitting every form without it and predicting what was left out:

- leave-one-out (LOO): each published run in turn;
- leave-one-encoder-out (LOEO): each encoder in turn, all its runs (CLIPA and OpenCLIP) and its
  published drops removed (L/16 and L/14 share their weights, so they leave together): the test
  of extrapolating in encoder size, which is what a plan on an unseen encoder does;
- leave-one-dataset-out (LODO): each dataset in turn, all its runs and the drops measured on it.

Each is summarised by the mean absolute error, the bias (mean signed error, predicted - published),
the share of held-out runs inside their 80% interval and the median interval half-width (coverage
bought with a +-11-point interval is not coverage).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clipa import fs
from clipa.costmodels import accuracy_data
from clipa.costmodels import accuracy_law as al
from clipa.costmodels import accuracy_model as am

ENCODER_GROUPS = {"B/16": ("B/16",), "L/16+L/14": ("L/16", "L/14"), "H/14": ("H/14",), "g/14": ("g/14",)}


@dataclass
class HeldOut:
    """One held-out run and what every form, refitted without it, predicts for it."""

    kind: str  # loo | loeo | lodo
    fold: str  # the run, encoder group or dataset left out
    name: str
    family: str
    finetuned: bool
    published: float
    means: list[float]  # per form (accuracy_model.FORMS order), points
    variances: list[float]  # per form, Laplace variance incl. the form's residual variance
    dist2: float  # sum of squared log-distances outside the refit's data (axes)
    cond_var: float  # variance of the settings seen at other encoders only (AccuracyLaw.doubt)
    extrapolation: list[str]

    def predict(self, weights, kappa: float) -> tuple[float, float, float]:
        """(mean, low, high) of the mixture with these form weights and extrapolation scale."""
        m, v = al.mix(np.array(self.means), np.array(self.variances), weights)
        sd = float(np.sqrt(v + kappa ** 2 * self.dist2 + self.cond_var))
        return float(m), float(m) - Z * sd, float(m) + Z * sd


Z = al.NormalDist().inv_cdf(0.5 + al.LEVEL / 2)


def _fold(kind: str, fold: str, train: list, drops: list, texts: list, test: list, starts=None,
          forms=am.FORMS) -> list[HeldOut]:
    from clipa.costmodels import accuracy_fit

    law = accuracy_fit.fit(train, drops, texts, x0=starts, forms=forms)
    feats = [r.features for r in test]
    means, variances = law.moments(feats, [r.family for r in test], which="all")
    d2, cond = law.doubt(feats, [r.family for r in test])
    out = []
    for i, r in enumerate(test):
        j = len(r.features.finetune)
        out.append(HeldOut(kind, fold, r.name, r.family, bool(r.features.finetune), r.top1,
                           [float(x) for x in means[:, i, j]], [float(x) for x in variances[:, i, j]],
                           float(d2[i]), float(cond[i]), law.notes(r.features)))
    return out


def leave_one_out(runs=None, only=None, starts=None, forms=am.FORMS) -> list[HeldOut]:
    """Each published run (or each ``only`` accepts) predicted by every form refitted without it."""
    runs = accuracy_data.runs() if runs is None else runs
    drops, texts = accuracy_data.mask_drops(), accuracy_data.text_drops()
    out = []
    for i, r in enumerate(runs):
        if only is None or only(r):
            out += _fold("loo", r.name, runs[:i] + runs[i + 1:], drops, texts, [r], starts, forms)
    return out


def leave_one_encoder_out(groups: Sequence[str] = tuple(ENCODER_GROUPS), starts=None, forms=am.FORMS) -> list[HeldOut]:
    """Each encoder group's runs (CLIPA and OpenCLIP) predicted without any of them or their drops."""
    runs, drops, texts = accuracy_data.runs(), accuracy_data.mask_drops(), accuracy_data.text_drops()
    out = []
    for g in groups:
        encs = ENCODER_GROUPS[g]
        out += _fold("loeo", g, [r for r in runs if r.features.encoder not in encs],
                     [d for d in drops if d.encoder not in encs], [t for t in texts if t.encoder not in encs],
                     [r for r in runs if r.features.encoder in encs], starts, forms)
    return out


def leave_one_dataset_out(starts=None, forms=am.FORMS) -> list[HeldOut]:
    """Each dataset's runs predicted without any run on it (nor the drops measured on it)."""
    runs, drops, texts = accuracy_data.runs(), accuracy_data.mask_drops(), accuracy_data.text_drops()
    out = []
    for ds in am.DATASETS:
        # Every published drop was measured on LAION-400M (ext_clipa_inverse_scaling.csv rows 16-19, 32).
        keep = ds != "laion-400m"
        out += _fold("lodo", ds, [r for r in runs if r.features.dataset != ds], drops if keep else [],
                     texts if keep else [], [r for r in runs if r.features.dataset == ds], starts, forms)
    return out


def validate(starts=None) -> list[HeldOut]:
    return leave_one_out(starts=starts) + leave_one_encoder_out(starts=starts) + leave_one_dataset_out(starts=starts)


def shipped(law: Optional[al.AccuracyLaw] = None) -> tuple[list, np.ndarray, float, dict]:
    """(the forms the law weighs, their weights, kappa, start points): what a test needs to redo the
    validation of the shipped law quickly (a form of weight 0 changes no prediction)."""
    law = law or al.default()
    comps = [c for c in law.all_components if c.weight > 0]
    return [c.form for c in comps], np.array([c.weight for c in comps]), law.kappa, {c.form: c.theta for c in comps}


def summary(rows: Sequence[HeldOut], weights, kappa: float) -> dict:
    """MAE, bias (predicted - published), 80%-interval coverage and median half-width, in points."""
    if not rows:
        return {"n": 0}
    pred = [r.predict(weights, kappa) for r in rows]
    e = np.array([m - r.published for (m, _, _), r in zip(pred, rows)])
    inside = [lo <= r.published <= hi for (_, lo, hi), r in zip(pred, rows)]
    return {"n": len(rows), "mae": float(np.mean(np.abs(e))), "bias": float(np.mean(e)),
            "inside": int(sum(inside)), "coverage": float(np.mean(inside)),
            "median_half_width": float(np.median([(hi - lo) / 2 for _, lo, hi in pred]))}


def tables(rows: Sequence[HeldOut], weights, kappa: float) -> list[dict]:
    """One summary per (kind, fold), for all held-out runs and for the CLIPA ones; LOO as one fold."""
    out = []
    for kind in ("loo", "loeo", "lodo"):
        rs = [r for r in rows if r.kind == kind]
        folds = ["all"] if kind == "loo" else list(dict.fromkeys(r.fold for r in rs))
        for fold in folds:
            sel = rs if fold == "all" else [r for r in rs if r.fold == fold]
            out.append({"kind": kind, "fold": fold, "all": summary(sel, weights, kappa),
                        "clipa": summary([r for r in sel if r.family == "clipa"], weights, kappa)})
    return out


def weigh(rows: Sequence[HeldOut], target: float = al.LEVEL, step: float = 0.25) -> tuple[np.ndarray, float]:
    """Form weights and extrapolation scale kappa from held-out predictions (LOO and LOEO rows).

    Stacking (Yao et al. 2018): the weights and kappa that maximise the log score of the mixture's
    (moment-matched normal) prediction of every leave-one-out and leave-one-encoder-out run, so a
    form weighs what its predictions of runs it never saw are worth, extrapolation in encoder size
    included. kappa is then raised in ``step``s until the intervals hold ``target`` of the
    leave-one-encoder-out runs (pooled over the encoders).
    """
    from scipy.optimize import minimize

    held = [r for r in rows if r.kind in ("loo", "loeo")]
    MU = np.array([r.means for r in held])
    V = np.array([r.variances for r in held])
    Y = np.array([r.published for r in held])
    D2 = np.array([r.dist2 for r in held])
    CV = np.array([r.cond_var for r in held])
    k = MU.shape[1]

    def unpack(x):
        w = np.exp(x[:k] - x[:k].max())
        return w / w.sum(), float(np.exp(x[k]))

    def nll(x):
        w, kappa = unpack(x)
        m = MU @ w
        v = ((V + (MU - m[:, None]) ** 2) * w).sum(1) + kappa ** 2 * D2 + CV
        return 0.5 * np.sum(np.log(2 * np.pi * v) + (Y - m) ** 2 / v)

    res = minimize(nll, np.r_[np.zeros(k), 0.0], method="L-BFGS-B", bounds=[(-30, 30)] * k + [(-6, 3)])
    w, kappa = unpack(res.x)
    w = np.where(w < 1e-4, 0.0, w)
    w /= w.sum()
    kappa = round(kappa / 0.05) * 0.05
    loeo = [r for r in rows if r.kind == "loeo"]
    while summary(loeo, w, kappa)["coverage"] < target and kappa < 10:
        kappa += step
    return w, kappa


def refit(path: Path = al.FIT_FILE) -> dict:
    """Fit every form, validate them (LOO, LOEO, LODO), weigh them, and write the stored fit to ``path``."""
    from clipa.costmodels import accuracy_fit

    t0 = time.perf_counter()
    law = accuracy_fit.fit()
    fit_s = time.perf_counter() - t0
    held = validate({c.form: c.theta for c in law.all_components})
    w, kappa = weigh(held)
    law = al.AccuracyLaw([replace(c, weight=float(wi)) for c, wi in zip(law.all_components, w)], law.support,
                         kappa, law.meta)
    data = {"format": al.FORMAT, "fingerprint": accuracy_data.fingerprint(), "params_order": list(am.PARAMS),
            "level": al.LEVEL, **law.to_json(), "weights_from": WEIGHTS_FROM,
            "n_obs": law.meta["n_obs"], "n_runs": law.meta["n_runs"],
            "fit_seconds": round(fit_s, 3), "validation": [asdict(h) for h in held]}
    fs.write_atomic(path, json.dumps(data, indent=1) + "\n")
    al.default.cache_clear()
    return data


WEIGHTS_FROM = ("stacking: weights and kappa maximising the log score of the leave-one-out and "
                "leave-one-encoder-out predictions (kappa raised until 80% of the LOEO runs are inside)")


def stored_validation(law: al.AccuracyLaw) -> Optional[list[HeldOut]]:
    v = law.meta.get("validation")
    return None if v is None else [HeldOut(**h) for h in v]


def report(law: Optional[al.AccuracyLaw] = None) -> dict:
    """Forms and weights, per-run fit and leave-one-out, and the LOO / LOEO / LODO summaries."""
    law = law or al.default()
    held = stored_validation(law)
    if held is None:
        held = validate({c.form: c.theta for c in law.all_components})
    w = law.weights
    runs = accuracy_data.runs()
    means, variances = law.moments([r.features for r in runs], [r.family for r in runs])
    last = np.array([len(r.features.finetune) for r in runs])
    idx = np.arange(len(runs))
    pred = al.mix(means[:, idx, last], variances[:, idx, last], [c.weight for c in law.components])[0]
    loo = {h.name: h.predict(w, law.kappa) for h in held if h.kind == "loo"}
    rows = []
    for r, p in zip(runs, pred):
        h = loo.get(r.name)
        rows.append({"name": r.name, "family": r.family, "finetuned": bool(r.features.finetune),
                     "published": r.top1, "predicted": round(float(p), 3), "residual": round(float(p - r.top1), 3),
                     "loo_predicted": None if h is None else round(h[0], 3),
                     "loo_interval": None if h is None else [round(h[1], 3), round(h[2], 3)], "source": r.source})
    ft = [x for x in rows if x["family"] == "clipa" and x["finetuned"] and x["loo_predicted"] is not None]
    return {
        "forms": [{"name": c.form.name, "weight": c.weight, "sigma": c.sigma, **c.meta, "parameters": c.params}
                  for c in law.all_components],
        "parameters": law.params,
        "kappa": law.kappa,
        "weights_from": WEIGHTS_FROM,
        "level": al.LEVEL,
        "runs": rows,
        "n_runs": len(rows),
        "validation": tables(held, w, law.kappa),
        "held_out": [{"kind": h.kind, "fold": h.fold, "name": h.name, "family": h.family, "published": h.published,
                      "predicted": round(p[0], 3), "interval": [round(p[1], 3), round(p[2], 3)],
                      "extrapolation": h.extrapolation}
                     for h, p in ((h, h.predict(w, law.kappa)) for h in held if h.kind != "loo")],
        "loo_mae_finetuned": float(np.mean([abs(x["loo_predicted"] - x["published"]) for x in ft])),
        "loo_mae_all": float(np.mean([abs(x["loo_predicted"] - x["published"]) for x in rows if x["loo_predicted"] is not None])),
        "mae_in_sample": float(np.mean([abs(x["residual"]) for x in rows])),
    }


def plot(path: Path, law: Optional[al.AccuracyLaw] = None, rep: Optional[dict] = None) -> Path:
    """PNG of predicted (fit and leave-one-out, with its interval) against published top-1; ``rep``:
    ``report(law)`` if the caller already built it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = rep if rep is not None else report(law)
    fig, ax = plt.subplots(figsize=(6, 6))
    for fam, marker in (("clipa", "o"), ("openclip", "s")):
        rows = [r for r in rep["runs"] if r["family"] == fam]
        ax.scatter([r["published"] for r in rows], [r["predicted"] for r in rows], marker=marker, label=f"{fam}: fit")
        held = [r for r in rows if r["loo_predicted"] is not None]
        ax.errorbar([r["published"] for r in held], [r["loo_predicted"] for r in held],
                    yerr=[[r["loo_predicted"] - r["loo_interval"][0] for r in held],
                          [r["loo_interval"][1] - r["loo_predicted"] for r in held]],
                    fmt=marker, mfc="none", mec="k", ecolor="0.6", lw=0.8, label=f"{fam}: leave-one-out, 80%")
    lo = min(r["published"] for r in rep["runs"]) - 2
    ax.plot([lo, 85], [lo, 85], "k--", lw=0.8)
    ax.set_xlabel("published zero-shot IN-1k top-1 (%)")
    ax.set_ylabel("predicted top-1 (%)")
    ax.set_title(f"accuracy law: LOO MAE (CLIPA fine-tuned) {rep['loo_mae_finetuned']:.2f} pts")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def format_tables(rep: dict) -> list[str]:
    lines = [f"{'held out':24s} {'runs':>10s} {'n':>3s} {'MAE':>6s} {'bias':>6s} {'inside 80%':>11s} {'median +-':>9s}"]
    for t in rep["validation"]:
        label = "leave-one-out" if t["kind"] == "loo" else f"{t['kind'].upper()} {t['fold']}"
        for who in ("all", "clipa"):
            s = t[who]
            if not s["n"] or (who == "clipa" and s["n"] == t["all"]["n"]):
                continue
            lines.append(f"{label:24s} {who:>10s} {s['n']:3d} {s['mae']:6.2f} {s['bias']:+6.2f} "
                         f"{s['inside']:4d} ({s['coverage']:4.0%}) {s['median_half_width']:9.2f}")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m clipa.costmodels.accuracy_law")
    ap.add_argument("--refit", action="store_true", help=f"fit, validate and write {al.FIT_FILE.name}")
    ap.add_argument("--plot", type=Path, help="write a predicted-vs-published PNG here")
    args = ap.parse_args(argv)
    if args.refit:
        data = refit()
        print(f"wrote {al.FIT_FILE} ({data['n_runs']} runs, {data['n_obs']} observations, "
              f"{len(data['forms'])} forms, fit {data['fit_seconds']} s)")
    rep = report()
    for r in rep["runs"]:
        print(f"{r['published']:6.2f} {r['predicted']:6.2f} {r['loo_predicted']:6.2f}  {r['name']}")
    for f in rep["forms"]:
        print(f"form {f['name']:24s} weight {f['weight']:.3f}  sigma {f['sigma']:.3f}  AICc {f.get('aicc', float('nan')):.2f}")
    print("\n".join(format_tables(rep)))
    if args.plot:
        print("plot:", plot(args.plot))
