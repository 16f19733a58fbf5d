"""One self-contained HTML report: the tables as HTML, the PNGs embedded as base64 data URIs."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

from clipa import fs
from clipa.report import tables
from clipa.report.load import Run

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b00; font-weight: bold; } .warn { color: #a60; } .muted { color: #777; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _run_table(run: Run) -> str:
    out = ["<table><tr><th>stage</th><th>metric</th><th>predicted</th><th>achieved</th>"
           "<th>rel. err</th><th>interval</th></tr>"]
    for r in tables.run_rows(run):
        err_cls = "warn" if r.rel_err is not None and abs(r.rel_err) > 0.2 else ""
        iv_cls = "bad" if r.inside is False else ""
        out.append(f"<tr><td>{_esc(r.stage)}</td><td>{_esc(r.metric)}</td>"
                   f"<td class=num>{_esc(tables.fmt_value(r.metric, r.predicted))}</td>"
                   f"<td class=num>{_esc(tables.fmt_value(r.metric, r.achieved))}</td>"
                   f"<td class='num {err_cls}'>{_esc(tables.fmt_err(r))}</td>"
                   f"<td class='{iv_cls}'>{_esc(tables.fmt_interval(r))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _compare_table(runs: Sequence[Run]) -> str:
    head = "".join(f"<th>{_esc(r.name)}</th>" for r in runs)
    out = [f"<table><tr><th></th>{head}</tr>"]
    per_run = [{row.metric: row for row in tables.run_rows(r) if row.stage == "total"} for r in runs]
    for m in tables.METRICS:
        cells = "".join(
            f"<td class=num>{_esc(tables.fmt_value(m, rows[m].predicted))} → {_esc(tables.fmt_value(m, rows[m].achieved))}"
            f" <span class=muted>({_esc(tables.fmt_err(rows[m]))})</span></td>" for rows in per_run)
        out.append(f"<tr><th>{_esc(m)}</th>{cells}</tr>")
    for key, vals in tables.recipe_differences(list(runs)):
        out.append(f"<tr><td class=muted>{_esc(key)}</td>" + "".join(f"<td>{_esc(v)}</td>" for v in vals) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"


def write(runs: Sequence[Run], images: dict[str, list[Path]], out: Path, notes: Sequence[str] = ()) -> Path:
    """Write ``out`` (atomically); ``images`` maps a section title to its PNGs."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>clipa report</title>",
             f"<style>{CSS}</style></head><body>", "<h1>clipa report</h1>",
             "<p class=muted>Relative error = (predicted − achieved) / achieved; positive means over-predicted. "
             "Top-1 is zero-shot, in percent; the interval is the accuracy law's.</p>"]
    for n in notes:
        parts.append(f"<p class=muted>{_esc(n)}</p>")
    if len(runs) > 1:
        parts += ["<h2>Runs side by side</h2>", _compare_table(runs)]
    for run in runs:
        parts.append(f"<h2>{_esc(run.name)} <span class=muted>({_esc(run.recipe.encoder.name)}, "
                     f"{_esc(run.recipe.dataset.name)}, {_esc(run.recipe.hardware.name)})</span></h2>")
        parts.append(f"<p class=muted>{_esc(run.path)} — predictions: {_esc(run.predictions_source)}</p>")
        status = tables.status_lines(run)
        if status:
            parts.append("<ul>" + "".join(f"<li class={'bad' if i == 0 and not run.finished else 'muted'}>"
                                          f"{_esc(s)}</li>" for i, s in enumerate(status)) + "</ul>")
        parts.append(_run_table(run))
    for title, paths in images.items():
        if paths:
            parts.append(f"<h2>{_esc(title)}</h2>")
            parts += [_img(p, f"{title}: {Path(p).stem}") for p in paths]
    parts.append("</body></html>")
    fs.write_atomic(out, "\n".join(parts))
    return out
