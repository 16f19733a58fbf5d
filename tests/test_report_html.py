"""The report's PNGs and its one self-contained HTML file, from run directories written by the test."""
import base64
import re

import matplotlib.image as mpimg
from report_rundirs import demo_recipe, write_run

from clipa.cli._common import run_app
from clipa.cli.report import app
from clipa.report import figures, plots
from clipa.report.load import load_run


def test_curves_png_has_a_line_per_stage(tmp_path):
    run = load_run(write_run(tmp_path / "a", demo_recipe()))
    p = plots.curves(run, tmp_path / "c.png")
    img = mpimg.imread(p)
    assert img.shape[0] > 300 and img.shape[1] > 800
    # the two stage colours are both drawn (tab:blue, tab:orange), i.e. both stages' curves are there
    rgb = (img[..., :3] * 255).round()
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert ((abs(rgb - colour) < 8).all(axis=-1)).sum() > 50


def test_no_metrics_no_curve(tmp_path):
    d = write_run(tmp_path / "a", demo_recipe(), finished=False, stop_after=0, checkpoints=())
    assert plots.curves(load_run(d), tmp_path / "c.png") is None


def test_html_is_self_contained_with_every_png(tmp_path):
    a = write_run(tmp_path / "syntax", demo_recipe("s", text_reduction="syntax"), top1=26.0)
    b = write_run(tmp_path / "trunc", demo_recipe("t"), finished=False, stop_after=2000)
    out = tmp_path / "rep"
    assert run_app(app, [str(a), str(b), "--out", str(out), "--no-front"]) == 0
    page = (out / "report.html").read_text()
    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"curves_syntax.png", "curves_trunc.png", "predicted_vs_achieved.png", "pareto.png"} <= names
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(pngs)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in pngs)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing fetched from outside the file
    assert "unfinished or crashed run" in page and "stages[0].text_reduction" in page


def test_published_runs_come_from_the_data_file():
    pts = figures.published_runs()
    # CLIPA-v2 paper Table 4: H/14 on DataComp-1B, 81.1% for $9,324 (ext_clipa_results.csv row 5)
    assert any(abs(c - 9324) < 1 and abs(t - 81.1) < 1e-9 for c, t, _ in pts)
    assert len({(round(c, -2), t) for c, t, _ in pts}) == len(pts)  # duplicates across sources once


def test_default_out_is_run_dir_report(tmp_path):
    a = write_run(tmp_path / "a", demo_recipe())
    assert run_app(app, [str(a), "--no-front"]) == 0
    assert (a / "report" / "report.html").is_file()
    html_text = (a / "report" / "report.html").read_text()
    assert html_text.count("data:image/png;base64,") >= 3
