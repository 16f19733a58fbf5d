"""Fitting, leave-one-out report and plot of the accuracy law (accuracy_law.py holds the law).

Only ``python -m clipa.costmodels.accuracy_law --refit``, ``fit_report`` and ``plot_fit`` come
here; planning reads the stored fit and never imports scipy.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from clipa.costmodels import accuracy_data
from clipa.costmodels.accuracy_law import (FIT_FILE, LEVEL, PARAMS, AccuracyLaw, FinetuneStage,
                                           RunFeatures, _design, _enc_info, _model)

# Start and bounds of the least-squares fit (percent points; exponents; log-scales; F0 in 1e8 samples).
X0 = np.array([90.0, 0.0, 0.0, -2.0, np.log(10), 0.5, np.log(20), 0.2, np.log(1), 1.0, 0.5, np.log(1), 1.0, 0.0, 0.1])
LO = np.array([50, -2, -2, -20, -10, 0.01, -10, 0.01, -10, 0.05, 0.0, -10, 0.05, -5.0, 0.0])
HI = np.array([100, 2, 2, 20, 10, 3.0, 10, 3.0, 10, 4.0, 3.0, 10, 4.0, 5.0, 0.9])


def _drop_pairs(drops: list[accuracy_data.MaskDrop]) -> tuple[dict, dict]:
    """Design rows for each published mask drop: the same run fine-tuned with 50% vs 100% tokens.

    The drop the law predicts does not depend on the pre-training as long as pre-training used
    fewer tokens than the fine-tune (true of every CLIPA run), so a 36-token, 8-text pre-training
    stands in for the unpublished one.
    """
    half, full = [], []
    for dr in drops:
        _, t224 = _enc_info(dr.encoder)
        pre = dict(encoder=dr.encoder, dataset="laion-400m", image_tokens=36, text_len=8, samples=accuracy_data.V1_PRETRAIN)
        half.append(RunFeatures(**pre, finetune=(FinetuneStage(224, t224 // 2, dr.samples, 32, 0.5),)))
        full.append(RunFeatures(**pre, finetune=(FinetuneStage(224, t224, dr.samples, 32, 0.0),)))
    return _design(half), _design(full)


class _Problem:
    def __init__(self, runs: list[accuracy_data.Run], drops: list[accuracy_data.MaskDrop]):
        self.runs, self.drops = runs, drops
        self.d = _design([r.features for r in runs], [r.family for r in runs])
        self.y = np.array([r.top1 for r in runs])
        self.nft = np.array([len(r.features.finetune) for r in runs])
        self.dh, self.df = _drop_pairs(drops)
        self.nd = np.array([d.drop for d in drops])

    def predict(self, theta: np.ndarray, d=None, nft=None) -> np.ndarray:
        d = self.d if d is None else d
        nft = self.nft if nft is None else nft
        acc = _model(theta, d)[0]
        return acc[np.arange(len(nft)), nft]

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        r_runs = self.predict(theta) - self.y
        if len(self.drops):
            ones = np.ones(len(self.drops), int)
            drop = self.predict(theta, self.df, ones) - self.predict(theta, self.dh, ones)
            return np.concatenate([r_runs, drop - self.nd])
        return r_runs


def _solve(prob: _Problem, x0=X0):
    from scipy.optimize import least_squares

    res = least_squares(prob.residuals, x0, bounds=(LO, HI), method="trf", x_scale="jac", max_nfev=4000,
                        xtol=1e-12, ftol=1e-12, gtol=1e-12)
    return res


def fit(runs: Optional[list] = None, drops: Optional[list] = None, with_cov: bool = True, x0=X0) -> AccuracyLaw:
    """Least-squares fit to ``runs`` (default: all published runs) and the published mask drops."""
    runs = accuracy_data.runs() if runs is None else runs
    drops = accuracy_data.mask_drops() if drops is None else drops
    prob = _Problem(runs, drops)
    res = _solve(prob, x0)
    m, p = len(res.fun), len(res.x)
    sigma = float(np.sqrt(2 * res.cost / max(1, m - p)))
    cov = np.zeros((p, p))
    if with_cov:
        J = res.jac
        cov = sigma ** 2 * np.linalg.pinv(J.T @ J)
    return AccuracyLaw(res.x, cov, sigma, {"n_obs": m, "n_params": p, "n_runs": len(runs)})


def loo(runs: Optional[list] = None, only=None) -> dict[str, float]:
    """Leave-one-out prediction of every run (or those ``only`` accepts): refit without it, predict it (percent)."""
    runs = accuracy_data.runs() if runs is None else runs
    drops = accuracy_data.mask_drops()
    out = {}
    for i, r in enumerate(runs):
        if only is not None and not only(r):
            continue
        law = fit(runs[:i] + runs[i + 1:], drops, with_cov=False)
        out[r.name] = float(_Problem([r], []).predict(law.theta)[0])  # incl. the OpenCLIP offset
    return out


def refit(path: Path = FIT_FILE) -> dict:
    """Fit, compute leave-one-out predictions, and write them atomically to ``path``."""
    t0 = time.perf_counter()
    law = fit()
    fit_s = time.perf_counter() - t0
    loo_pred = loo()
    data = {
        "fingerprint": accuracy_data.fingerprint(),
        "params_order": list(PARAMS),
        "theta": [float(v) for v in law.theta],
        "cov": [[float(v) for v in row] for row in law.cov],
        "sigma": law.sigma,
        "level": LEVEL,
        "n_obs": law.meta["n_obs"],
        "n_params": law.meta["n_params"],
        "n_runs": law.meta["n_runs"],
        "fit_seconds": round(fit_s, 3),
        "loo": loo_pred,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return data


def report(law: Optional[AccuracyLaw] = None) -> dict:
    """Parameters, per-run (name, published, predicted, residual, loo_predicted), LOO MAE on fine-tuned runs."""
    from clipa.costmodels.accuracy_law import default

    law = law or default()
    runs = accuracy_data.runs()
    loo_pred = law.meta.get("loo") or loo(runs)
    prob = _Problem(runs, [])
    pred = prob.predict(law.theta)  # incl. the OpenCLIP offset for OpenCLIP runs
    rows = []
    for r, p in zip(runs, pred):
        lp = loo_pred.get(r.name)
        rows.append({"name": r.name, "family": r.family, "finetuned": bool(r.features.finetune),
                     "published": r.top1, "predicted": round(float(p), 3), "residual": round(float(p - r.top1), 3),
                     "loo_predicted": None if lp is None else round(lp, 3), "source": r.source})
    ft = [x for x in rows if x["family"] == "clipa" and x["finetuned"] and x["loo_predicted"] is not None]
    return {
        "parameters": law.params,
        "sigma": law.sigma,
        "level": LEVEL,
        "runs": rows,
        "n_runs": len(rows),
        "loo_mae_finetuned": float(np.mean([abs(x["loo_predicted"] - x["published"]) for x in ft])),
        "loo_mae_all": float(np.mean([abs(x["loo_predicted"] - x["published"]) for x in rows if x["loo_predicted"] is not None])),
        "mae_in_sample": float(np.mean([abs(x["residual"]) for x in rows])),
    }


def plot(path: Path, law: Optional[AccuracyLaw] = None, rep: Optional[dict] = None) -> Path:
    """PNG of predicted (fit and leave-one-out) against published top-1; ``rep``: ``report(law)``
    if the caller already built it (building it costs a leave-one-out pass when the fit is not stored)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = rep if rep is not None else report(law)
    fig, ax = plt.subplots(figsize=(6, 6))
    for fam, marker in (("clipa", "o"), ("openclip", "s")):
        rows = [r for r in rep["runs"] if r["family"] == fam]
        ax.scatter([r["published"] for r in rows], [r["predicted"] for r in rows], marker=marker, label=f"{fam}: fit")
        ax.scatter([r["published"] for r in rows], [r["loo_predicted"] for r in rows], marker=marker,
                   facecolors="none", edgecolors="k", label=f"{fam}: leave-one-out")
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m clipa.costmodels.accuracy_law")
    ap.add_argument("--refit", action="store_true", help=f"fit and write {FIT_FILE.name}")
    ap.add_argument("--plot", type=Path, help="write a predicted-vs-published PNG here")
    args = ap.parse_args(argv)
    if args.refit:
        data = refit()
        print(f"wrote {FIT_FILE} ({data['n_runs']} runs, {data['n_obs']} observations, "
              f"{data['n_params']} parameters, fit {data['fit_seconds']} s)")
        from clipa.costmodels import accuracy_law

        accuracy_law.default.cache_clear()
    rep = report()
    for r in rep["runs"]:
        print(f"{r['published']:6.2f} {r['predicted']:6.2f} {r['loo_predicted']:6.2f}  {r['name']}")
    print("parameters:", {k: round(v, 4) for k, v in rep["parameters"].items()})
    print(f"sigma {rep['sigma']:.3f}  in-sample MAE {rep['mae_in_sample']:.3f}  "
          f"LOO MAE fine-tuned {rep['loo_mae_finetuned']:.3f}  LOO MAE all {rep['loo_mae_all']:.3f}")
    if args.plot:
        print("plot:", plot(args.plot))
