"""The report's pictures, as PNG files (matplotlib, Agg backend: no display needed).

Each function takes plain data, writes one PNG and returns its path (or None when there is
nothing to draw), so the HTML report and the tests use the same files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from clipa.report.load import Run  # noqa: E402
from clipa.report.tables import run_rows  # noqa: E402

DPI = 110
STAGE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
CHOSEN_COLOURS = ("tab:purple", "tab:orange", "tab:cyan", "tab:olive", "tab:pink", "tab:brown")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def curves(run: Run, path: Path) -> Optional[Path]:
    """Training loss and zero-shot top-1 against samples seen (all stages), one colour per stage."""
    if not any(m.loss is not None or m.top1 is not None for m in run.metrics):
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for i, st in enumerate(run.recipe.stages):
        colour = STAGE_COLOURS[i % len(STAGE_COLOURS)]
        train = [m for m in run.stage_lines(st.name) if m.loss is not None]
        evals = [m for m in run.stage_lines(st.name, "eval") if m.top1 is not None]
        label = f"{st.name} ({st.image_size}px, {st.text_len} tok)"
        if train:
            ax_loss.plot([offset + m.samples for m in train], [m.loss for m in train], color=colour, label=label)
        if evals:
            ax_acc.plot([offset + m.samples for m in evals], [m.top1 for m in evals], "o-", color=colour, label=label)
        for ax in (ax_loss, ax_acc):
            if i > 0:
                ax.axvline(offset, color="grey", ls="--", lw=0.8)
        offset += st.samples
    p = run.predictions
    if p is not None:
        ax_acc.axhline(p.predicted_top1, color="black", ls=":", lw=1, label=f"predicted {p.predicted_top1:.1f}%")
    ax_loss.set(xlabel="samples seen", ylabel="contrastive loss", title=f"{run.name}: training loss")
    ax_acc.set(xlabel="samples seen", ylabel="zero-shot top-1 (%)",
               title=f"{run.name}: zero-shot top-1 ({run.achieved.eval_set if run.achieved else 'eval'})")
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(0, offset)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def _pairs(runs: Sequence[Run], metric: str, scale: float = 1.0):
    out = []
    for r in runs:
        row = next(x for x in run_rows(r) if x.stage == "total" and x.metric == metric)
        if row.predicted is not None and row.achieved is not None:
            out.append((r.name, row.predicted * scale, row.achieved * scale, row.interval))
    return out


def scatter(runs: Sequence[Run], path: Path) -> Optional[Path]:
    """Predicted against achieved across runs: top-1 (with the interval), wall time, dollars."""
    panels = [("top-1 %", 1.0, "zero-shot top-1 (%)", False), ("wall", 3600.0, "wall time (s)", True),
              ("cost $", 1.0, "cost ($)", True)]
    data = [(_pairs(runs, m, s), label, log) for m, s, label, log in panels]
    if not any(d for d, _, _ in data):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (pairs, label, log) in zip(axes, data):
        ax.set(xlabel=f"achieved {label}", ylabel=f"predicted {label}", title=label)
        ax.grid(alpha=0.3)
        if log:  # a free run (cost $0 on the local CPU) has no place on a log axis
            pairs = [q for q in pairs if q[1] > 0 and q[2] > 0]
        if not pairs:
            why = "no finished runs" if not log else "no finished runs with positive values"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
            continue
        ach = [a for _, _, a, _ in pairs]
        pred = [p for _, p, _, _ in pairs]
        for name, p, a, iv in pairs:
            if iv is not None:
                ax.errorbar(a, p, yerr=[[p - iv[0]], [iv[1] - p]], fmt="o", capsize=3,
                            color="tab:red" if not iv[0] <= a <= iv[1] else "tab:blue")
            else:
                ax.plot(a, p, "o", color="tab:blue")
            ax.annotate(name, (a, p), fontsize=7, xytext=(4, 4), textcoords="offset points")
        lo, hi = min(ach + pred), max(ach + pred)
        if log:
            lo, hi = lo / 1.5, hi * 1.5
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            pad = max(1.0, 0.1 * (hi - lo))
            lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="predicted = achieved")
        ax.fill_between([lo, hi], [lo * 0.8, hi * 0.8], [lo * 1.2, hi * 1.2], color="grey", alpha=0.15, label="±20%")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def pareto(front: Sequence[tuple[float, float, str]], chosen: Sequence[tuple[str, float, float, Optional[float], Optional[float]]],
           published: Sequence[tuple[float, float, str]], path: Path, *, title: str) -> Optional[Path]:
    """Accuracy against cost: the front (cost $, top-1, label), the chosen recipes (name, predicted
    cost, predicted top-1, achieved cost or None, achieved top-1 or None) and the published runs
    (cost, top-1, label). Published points are numbered and listed in a key (labels would overlap)."""
    if not front and not chosen and not published:
        return None
    fig, (ax, key_ax) = plt.subplots(2, 1, figsize=(10, 6.8), height_ratios=[5, 0.6])
    key_ax.axis("off")
    if front:
        pts = sorted(front)
        ax.step([c for c, _, _ in pts], [t for _, t, _ in pts], "-", where="post", color="tab:blue", alpha=0.5)
        ax.plot([c for c, _, _ in pts], [t for _, t, _ in pts], "o", ms=4, color="tab:blue", label="Pareto front (predicted)")
    key = []
    for i, (c, t, label) in enumerate(published, 1):
        ax.plot(c, t, "^", color="tab:red", ms=7)
        ax.annotate(str(i), (c, t), fontsize=7, color="tab:red", xytext=(4, 2), textcoords="offset points")
        key.append(f"{i}: {label}  {t:.1f}%, ${c:,.0f}")
    if published:
        ax.plot([], [], "^", color="tab:red", label="published run (paper's top-1 and cost)")
    unpriced = []
    for i, (name, pc, pt, ac, at) in enumerate(chosen):
        colour = CHOSEN_COLOURS[i % len(CHOSEN_COLOURS)]
        if pc is None or pc <= 0:  # no price for this hardware (e.g. cpu): a log axis has no place for $0
            unpriced.append(f"{name} (predicted {pt:.1f}%" + (f", achieved {at:.1f}%" if at is not None else "") + ")")
            continue
        ax.plot(pc, pt, "*", mfc="none", mec=colour, ms=15, mew=1.5, label=f"{name}: predicted")
        if ac is not None and at is not None and ac > 0:
            ax.plot(ac, at, "*", color=colour, mec="black", ms=15, label=f"{name}: achieved")
            ax.plot([pc, ac], [pt, at], ":", color=colour)
    if key:  # below the axes: a key inside them hides points
        half = (len(key) + 1) // 2
        for col, lines in enumerate((key[:half], key[half:])):
            key_ax.text(0.5 * col, 1.0, "\n".join(lines), transform=key_ax.transAxes, va="top", ha="left",
                        fontsize=7, color="tab:red", family="monospace")
    if unpriced:
        key_ax.text(0.0, -0.2 if key else 1.0, "not drawn, cost $0 (no price for the hardware): " + "; ".join(unpriced),
                    transform=key_ax.transAxes, va="top", ha="left", fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="cost ($, log scale)", ylabel="zero-shot ImageNet top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _short(label: str, n: int = 60) -> str:
    """Drop checkpoint file names in parentheses; cut to ``n`` characters."""
    import re

    label = re.sub(r"\s*\([^)]*\.pt\)", "", label)
    return label if len(label) <= n else label[: n - 1] + "…"


def residuals(rows: Sequence[tuple[str, float, float, Optional[float]]], path: Path, *, title: str) -> Optional[Path]:
    """The accuracy law's residuals: rows of (label, published top-1, fitted top-1, leave-one-out top-1 or None)."""
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r[2] - r[1])
    y = list(range(len(rows)))
    fit = [f - pub for _, pub, f, _ in rows]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.3 * len(rows) + 1.5)))
    ax.barh(y, fit, height=0.6, color=["tab:red" if r > 0 else "tab:blue" for r in fit], label="fit (in sample)")
    loo = [(i, lo - pub) for i, (_, pub, _, lo) in enumerate(rows) if lo is not None]
    if loo:
        ax.plot([r for _, r in loo], [i for i, _ in loo], "kx", ms=5, label="leave-one-out")
    ax.set_yticks(y, [f"{_short(label)} ({pub:.1f}%)" for label, pub, _, _ in rows], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("predicted - published zero-shot top-1 (points)")
    fig.suptitle(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
