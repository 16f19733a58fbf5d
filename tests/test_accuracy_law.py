"""The accuracy law: error on runs it never saw (runs, encoders), intervals that widen outside the data
and say so, sane shapes where there is no data, monotonicity, speed, the stored fit."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from clipa.costmodels import accuracy_data, accuracy_fit, accuracy_law as al, accuracy_validate as av
from clipa.costmodels.accuracy_law import FinetuneStage as FT, RunFeatures as RF

ENCODERS_BY_SIZE = ["S/16", "B/16", "L/16", "H/14", "g/14", "bigG/14"]


@pytest.fixture(scope="module")
def law():
    return al.default()


@pytest.fixture(scope="module")
def shipped():
    """The shipped law's weighted forms, their weights, kappa and start points."""
    return av.shipped()


@pytest.fixture(scope="module")
def loeo(shipped):
    """Leave-one-encoder-out, refitted here (not the stored numbers) with the shipped forms and weights."""
    forms, w, kappa, starts = shipped
    rows = av.leave_one_encoder_out(("B/16", "L/16+L/14", "H/14"), starts=starts, forms=forms)
    return lambda group, family=None: av.summary(
        [r for r in rows if r.fold == group and (family is None or r.family == family)], w, kappa), rows


# -- held-out validation (issue 9 section 1) ------------------------------------------------------

def test_leave_one_out_error_on_finetuned_runs_is_at_most_one_point(shipped):
    forms, w, kappa, starts = shipped
    ft = lambda r: r.family == "clipa" and bool(r.features.finetune)  # noqa: E731
    rows = av.leave_one_out(only=ft, starts=starts, forms=forms)
    assert len(rows) >= 10
    s = av.summary(rows, w, kappa)
    assert s["mae"] <= 1.0, s
    assert s["coverage"] >= 0.7, s


def test_h14_left_out_is_predicted_without_bias_and_with_honest_intervals(loeo):
    s = loeo[0]("H/14")
    assert s["n"] == 15
    assert abs(s["bias"]) <= 1.0 and s["mae"] <= 2.0, s
    assert s["coverage"] >= 0.7, s
    assert s["median_half_width"] <= 4.0, s  # coverage is not bought with a +-11-point interval


def test_l16_l14_left_out_keeps_four_of_five_clipa_runs_inside(loeo):
    s = loeo[0]("L/16+L/14", "clipa")
    assert s["n"] == 5
    assert s["inside"] >= 4, s


@pytest.mark.xfail(strict=True, reason=(
    "known gap (issue 9 asks <= 1.2): L/16+L/14 left out, the CLIPA runs' MAE is about 1.5. The two "
    "CLIPA-v1 L/16 pre-training-only evaluations (I17/T16 60.3 and I37/T8 57.9) miss by -2.9 and +3.1: "
    "without L/16, nothing pins how the 16-vs-8 text step and the 16-vs-36 image-token step split at "
    "L/16; their fine-tuned runs are within 1.1. Both misses stay inside or near their intervals."))
def test_l16_l14_left_out_mae_on_clipa_runs_at_most_1p2(loeo):
    s = loeo[0]("L/16+L/14", "clipa")
    assert s["mae"] <= 1.2, s


def test_b16_left_out_is_not_degenerate(loeo):
    summary, rows = loeo
    s = summary("B/16")
    assert s["n"] == 8 and s["mae"] <= 3.0, s
    for r in rows:
        if r.fold == "B/16":
            m, lo, hi = r.predict(*[x for x in av.shipped()[1:3]])
            assert 30 < lo <= m <= hi < 90, (r.name, m, lo, hi)  # the old law predicted below 0%


def test_stored_validation_matches_the_report_and_every_kind_is_there(law):
    rep = av.report(law)
    kinds = {(t["kind"], t["fold"]) for t in rep["validation"]}
    assert ("loo", "all") in kinds
    assert {("loeo", g) for g in av.ENCODER_GROUPS} <= kinds
    assert {("lodo", d) for d in al.DATASETS} <= kinds
    for t in rep["validation"]:
        assert {"mae", "bias", "coverage", "median_half_width", "inside", "n"} <= set(t["all"])


# -- the fit itself --------------------------------------------------------------------------------

def test_refit_reproduces_the_stored_fit(law):
    stored = json.loads(al.FIT_FILE.read_text())
    assert stored["fingerprint"] == accuracy_data.fingerprint(), "data changed: run --refit"
    assert stored["format"] == al.FORMAT
    forms = [c.form for c in law.all_components if c.weight > 0]
    fresh = accuracy_fit.fit(forms=forms, weights=[c.weight for c in law.all_components if c.weight > 0],
                             kappa=law.kappa)
    by_name = {c.form.name: c for c in law.all_components}
    for c in fresh.all_components:
        np.testing.assert_allclose(c.theta, by_name[c.form.name].theta, rtol=1e-3, atol=1e-3)
        assert abs(c.sigma - by_name[c.form.name].sigma) < 1e-3
    for name, f, _ in al.training_runs()[:21]:
        a, b = fresh.predict(f), law.predict(f)
        assert abs(a.top1 - b.top1) < 0.01 and abs((a.high - a.low) - (b.high - b.low)) < 0.05, name


def test_several_forms_carry_weight_and_their_doubt(law):
    weighted = [c for c in law.all_components if c.weight > 0.05]
    assert len(weighted) >= 2  # model-form uncertainty is in the mixture, not one form's say
    assert {c.form.size for c in weighted} == {"floor", "nofloor"}  # saturating or not beyond H/14: both
    assert abs(sum(c.weight for c in law.components) - 1) < 1e-9


def test_fit_report_contents(law):
    rep = al.fit_report(law)
    assert {"forms", "validation", "kappa", "runs", "weights_from"} <= set(rep)
    assert rep["n_runs"] == len(al.training_runs()) == len(rep["runs"])
    row = rep["runs"][0]
    assert {"name", "published", "predicted", "residual", "loo_predicted", "loo_interval"} <= set(row)
    assert abs(row["residual"] - (row["predicted"] - row["published"])) < 1e-2
    assert rep["loo_mae_finetuned"] <= 1.0


def test_training_runs_are_deduplicated_and_read_from_the_data():
    runs = al.training_runs()
    keys = [(f, top1) for _, f, top1 in runs]
    assert len(set(keys)) == len(keys)
    names = [n for n, _, _ in runs]
    assert len(set(names)) == len(names)
    # The unquoted "CLIPA-B/16(I50,T16) pretrain" row parses to its number, not a column shifted by one.
    assert dict((n, t) for n, _, t in runs)["CLIPA-B/16(I50,T16) pretrain"] == 59.7
    # No run with samples given as epochs sneaks in as "32 samples".
    assert all(f.samples >= 1e8 for _, f, _ in runs)
    assert accuracy_data.text_drops()[0].drop == pytest.approx(3.0)


# -- intervals and extrapolation (section 2) ------------------------------------------------------

AT_DATA = RF("H/14", "laion-2b", 36, 8, 12.8e9, finetune=(FT(224, 179, 512e6, 32, 0.3),))


def _hw(law, f):
    p = law.predict(f)
    return (p.high - p.low) / 2


def test_every_prediction_has_an_interval_and_inside_the_data_no_extrapolation(law):
    p = law.predict(AT_DATA)
    assert p.low < p.top1 < p.high and p.level == al.LEVEL
    assert p.extrapolation == []


@pytest.mark.parametrize("axis,values", [
    ("encoder", ["H/14", "g/14", "bigG/14"]),
    ("encoder", ["B/16", "S/16"]),
    ("image_tokens", [36, 16, 9, 4]),
    ("text_len", [8, 4, 2]),
    ("samples", [12.8e9, 25.6e9, 51.2e9, 1e11]),
    ("samples", [2.56e9, 1e9, 2.5e8]),
    ("ft_samples", [640e6, 1.28e9, 2.56e9, 5e9]),
    ("ft_size", [224, 336, 448, 560]),
])
def test_interval_widens_with_distance_outside_the_data(law, axis, values):
    def at(v):
        if axis == "ft_samples":
            return replace(AT_DATA, finetune=(FT(224, 179, v, 32, 0.3),))
        if axis == "ft_size":
            return replace(AT_DATA, finetune=(FT(v, int((v // 14) ** 2 * 0.7), 512e6, 32, 0.3),))
        return replace(AT_DATA, **{axis: v})
    widths = [_hw(law, at(v)) for v in values]
    assert all(b > a - 1e-6 for a, b in zip(widths, widths[1:])), (axis, values, widths)
    assert widths[-1] > widths[0] * 1.05, (axis, values, widths)
    assert law.predict(at(values[-1])).extrapolation, (axis, values[-1])


def test_extrapolation_names_each_axis_and_how_far(law):
    p = law.predict(replace(AT_DATA, encoder="g/14", dataset="datacomp-1b", image_tokens=16, text_len=16))
    notes = "\n".join(p.extrapolation)
    assert "encoder g/14 beyond H/14 (largest CLIPA run" in notes
    assert "text_len 16 with syntax: seen only at L/16" in notes
    assert "pre-training image tokens 16: seen only at L/16" in notes
    assert "encoder" in law.predict(replace(AT_DATA, encoder="S/16")).extrapolation[0]
    longer = law.predict(replace(AT_DATA, finetune=(FT(224, 179, 2.56e9, 32, 0.3),))).extrapolation
    assert any("fine-tune 2.56B beyond 640M" in e for e in longer)
    # Each setting's doubt grows with how far it is carried: g/14 is wider than H/14, bigG wider than g/14.
    assert _hw(law, replace(AT_DATA, encoder="g/14")) > 1.3 * _hw(law, AT_DATA)


def test_published_runs_lie_inside_the_data(law):
    for name, f, _ in al.training_runs():
        if name.startswith("CLIPA"):
            assert law.predict(f).extrapolation == [], name


# -- sane shapes where there is no data ------------------------------------------------------------

@pytest.mark.parametrize("enc,tokens", [("B/16", 196), ("L/16", 196), ("H/14", 256)])
def test_halving_the_text_from_8_to_4_tokens_costs_a_few_points(law, enc, tokens):
    ft = (FT(224, tokens, 131e6, 32),)
    for f in (RF(enc, "laion-400m", tokens // 4, 8, 2.56e9, finetune=ft), RF(enc, "laion-400m", tokens // 4, 8, 2.56e9)):
        cost = law.predict(f).top1 - law.predict(replace(f, text_len=4)).top1
        assert 0 <= cost <= (4.0 if f.finetune else 8.0), (enc, bool(f.finetune), cost)  # CLIPA Fig. 7: ~3 after FT


def test_a_longer_finetune_gains_about_what_clipa_v2_table_3_shows(law):
    # CLIPA-v2 Table 3 (H/14, 12.8B@84 on LAION-2B): 128M@224 (30% mask) 78.0, 512M 78.6, 640M 78.5.
    short = replace(AT_DATA, finetune=(FT(224, 179, 128e6, 32, 0.3),))
    gain = law.predict(AT_DATA).top1 - law.predict(short).top1
    assert 0.1 <= gain <= 1.2, gain


def test_s16_and_bigg14_stay_finite_and_monotone_in_size(law):
    for ds, ft in itertools.product(al.DATASETS, [(), (FT(224, 256, 131e6, 32),)]):
        preds = [law.predict(RF(e, ds, 36, 8, 12.8e9, finetune=ft)) for e in ENCODERS_BY_SIZE]
        tops = [p.top1 for p in preds]
        assert all(np.isfinite([p.top1, p.low, p.high]).all() for p in preds)
        assert tops == sorted(tops), (ds, bool(ft), tops)
        assert all(al.IN1K_CHANCE <= p.low <= p.top1 <= p.high <= 100 for p in preds)


def test_larger_encoder_and_more_samples_never_predict_lower(law):
    feats, index = [], {}
    grid = itertools.product(["laion-400m", "laion-2b", "datacomp-1b", "custom"], [16, 36, 64, 144, 256],
                             [4, 8, 16, 32, 77], ["syntax", "truncate"], ["resize", "random_mask"], [False, True],
                             [1e8, 1e9, 3e9, 1e10, 3e10])
    for ds, tok, tl, tred, ired, with_ft, s in grid:
        for enc in ENCODERS_BY_SIZE + ["L/14"]:
            fts = (FT(224, 256, 131e6, 32), FT(336, 345, 128e6, 32, 0.4)) if with_ft else ()
            index[(ds, tok, tl, tred, ired, with_ft, s, enc)] = len(feats)
            feats.append(RF(enc, ds, tok, tl, s, ired, tred, fts))
    top = law.mean(feats)
    for key, i in index.items():
        *rest, s, enc = key
        if enc in ENCODERS_BY_SIZE[1:]:
            smaller = ENCODERS_BY_SIZE[ENCODERS_BY_SIZE.index(enc) - 1]
            assert top[i] >= top[index[(*rest, s, smaller)]] - 1e-9, (key, smaller)
        if enc == "L/14":  # same weights as L/16: equal at equal tokens
            assert abs(top[i] - top[index[(*rest, s, "L/16")]]) < 1e-9
        if s > 1e8:
            less = [1e8, 1e9, 3e9, 1e10, 3e10][[1e8, 1e9, 3e9, 1e10, 3e10].index(s) - 1]
            assert top[i] >= top[index[(*rest, less, enc)]] - 1e-9, key


def test_more_finetune_samples_and_more_tokens_never_predict_lower(law):
    base = RF("B/16", "laion-400m", 49, 16, 2.56e9)
    prev = law.predict(base).top1
    for f in [1e7, 1e8, 5e8, 2e9]:
        cur = law.predict(replace(base, finetune=(FT(224, 196, f, 32),))).top1
        assert cur >= prev
        prev = cur
    by_tokens = [law.predict(replace(base, image_tokens=t)).top1 for t in (9, 16, 49, 100, 196, 400)]
    assert by_tokens == sorted(by_tokens)
    by_text = [law.predict(replace(base, text_len=t)).top1 for t in (2, 4, 8, 16, 32, 77)]
    assert by_text == sorted(by_text)


def test_inverse_scaling_token_penalty_shrinks_with_encoder_size(law):
    drops = []
    for enc in ["B/16", "L/16", "H/14"]:
        full = law.predict(RF(enc, "laion-400m", 196 if enc.endswith("16") else 256, 32, 2.56e9)).top1
        few = law.predict(RF(enc, "laion-400m", 16, 32, 2.56e9)).top1
        drops.append(full - few)
    assert drops[0] > drops[1] > drops[2] > 0


def test_syntax_masking_beats_truncation_at_equal_length(law):
    f = RF("B/16", "laion-400m", 49, 8, 2.56e9, text_reduction="truncate")
    assert law.predict(replace(f, text_reduction="syntax")).top1 > law.predict(f).top1


def test_offset_calibrates_and_stages_are_ordered(law):
    f = RF("H/14", "laion-2b", 36, 8, 12.8e9, finetune=(FT(224, 179, 512e6, 32, 0.3), FT(336, 345, 128e6, 32, 0.4)))
    p, q = law.predict(f), law.predict(f, offset=1.5)
    assert q.top1 == pytest.approx(p.top1 + 1.5) and q.low == pytest.approx(p.low + 1.5)
    stages = law.predict_stages(f)
    assert len(stages) == 3 and stages[-1].top1 == pytest.approx(p.top1)
    assert stages[0].top1 < stages[1].top1 < stages[2].top1
    assert all(isinstance(s.top1, float) for s in stages)


def test_demo_dataset_is_an_honest_uncalibrated_prior(law):
    p = law.predict(RF("demo", "demo", 16, 16, 2e5))
    chance = 100.0 / al.DEMO_CLASSES
    assert (p.low, p.high) == (chance, 100.0) and p.top1 == chance
    assert p.extrapolation and "demo" in p.extrapolation[0]
    assert law.predict(RF("demo", "demo", 16, 16, 2e5), offset=20).top1 == pytest.approx(chance + 20)
    c = law.predict(RF("H/14", "custom", 36, 8, 12.8e9))
    assert c.low <= al.IN1K_CHANCE + 1e-9 and c.high > c.top1
    assert c.extrapolation == ["dataset custom: no published run (the LAION laws as a prior until calibrated on your "
                               "runs)"]  # H/14's CLIPA settings: the prior is inside its data
    g = law.predict(RF("g/14", "custom", 36, 8, 12.8e9))  # ... and where it is not, the list says so
    assert g.extrapolation[1] == "prior: encoder g/14 beyond H/14 (largest CLIPA run; 1.6x its weights)"
    assert all(t.startswith("prior: ") and "laion-400m" not in t for t in g.extrapolation[1:])


def test_planning_path_is_fast_and_imports_neither_scipy_nor_torch_nor_jax():
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from clipa.costmodels.accuracy_law import default, RunFeatures as RF, FinetuneStage as FT\n"
        "law = default()\n"
        "for i in range(1000):\n"
        "    law.predict(RF('L/16', 'laion-400m', 36, 8, 1e9 + i * 1e7, finetune=(FT(224, 196, 1.3e8, 32),)))\n"
        "print(time.perf_counter() - t, *[m in sys.modules for m in ('scipy', 'torch', 'jax')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == ["False", "False", "False"]
    # Generous bound for a shared 2-core CI machine: the planner's own budget is < 2 s.
    assert float(out[0]) < 10.0


def test_plot_fit_writes_a_png(tmp_path, law):
    path = al.plot_fit(tmp_path / "fit.png", law)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
