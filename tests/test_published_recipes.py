"""The published CLIPA recipes load, match the published runs the law is fitted to (so it reproduces
them within 1 point, inside its data: no extrapolation note), and the law refitted without each run
predicts it within 1.5 points (leave-one-out: the out-of-sample figure)."""
from __future__ import annotations

import pytest

from clipa.costmodels import accuracy_data, accuracy_law as al
from clipa.planner import published as pub

# recipe file -> the run's row in costmodels/data/published_clipa_results.csv (the figure is read from there)
RUN_OF = {
    "clipa_v1_b16_i50_t16": "CLIPA-B/16(I50,T16) finetuned",
    "clipa_v1_l16_i17_t16": "CLIPA-L/16(I17,T16) finetuned",
    "clipa_v1_l16_i37_t8": "CLIPA-L/16(I37,T8) finetuned",
    "clipa_v2_h14_laion2b_84_224": "CLIPA-v2 H/14 LAION-2B 84+224",
    "clipa_v2_h14_laion2b_84_224_336": "CLIPA-v2 H/14 LAION-2B 84+224+336",
    "clipa_v2_h14_datacomp_70_224": "CLIPA-v2 H/14 DataComp 70+224",
    "clipa_v2_h14_datacomp_84_224": "CLIPA-v2 H/14 DataComp 84+224",
    "clipa_v2_h14_datacomp_84_224_336": "CLIPA-v2 H/14 DataComp 84+224+336",
}


def test_every_published_recipe_is_listed():
    assert sorted(pub.load_all()) == sorted(RUN_OF)


@pytest.mark.parametrize("fname", sorted(RUN_OF))
def test_recipe_loads_and_the_fitted_law_reproduces_it_within_one_point(fname):
    rec = pub.load_all()[fname]
    assert rec.predictions is None
    assert rec.notes and "ext_clipa_recipes.csv" in rec.notes
    published = accuracy_data.value(accuracy_data.PUB, "run", RUN_OF[fname], "zero_shot_in1k_top1")
    assert pub.published_top1(rec) == published  # the planner finds the same row by the recipe's name
    pred = al.default().predict(al.features_from_recipe(rec))
    assert abs(pred.top1 - published) <= 1.0, (fname, pred, published)
    assert pred.low < published < pred.high or abs(pred.top1 - published) < 0.5
    assert pred.extrapolation == [], (fname, pred.extrapolation)  # a published run is inside the fitted data


@pytest.mark.parametrize("fname", sorted(RUN_OF))
def test_recipe_matches_the_published_run(fname):
    """The recipe's features are those of the published row the law was fitted to (token counts etc.)."""
    rec = pub.load_all()[fname]
    f = al.features_from_recipe(rec)
    fitted = {n: feats for n, feats, _ in al.training_runs()}[RUN_OF[fname]]
    assert (f.encoder, f.dataset, f.image_tokens, f.text_len, f.text_reduction) == \
        (fitted.encoder, fitted.dataset, fitted.image_tokens, fitted.text_len, fitted.text_reduction)
    assert len(f.finetune) == len(fitted.finetune)
    for a, b in zip(f.finetune, fitted.finetune):
        assert (a.image_size, a.image_tokens, a.text_len, a.mask_ratio) == (b.image_size, b.image_tokens, b.text_len, b.mask_ratio)
        assert abs(a.samples / b.samples - 1) < 0.03  # configs: 524,288,000 and 131,072,000; papers: "512M", "128M"
    assert abs(f.samples / fitted.samples - 1) < 0.01


@pytest.fixture(scope="module")
def loo() -> dict:
    from clipa.costmodels import accuracy_validate

    return {r["name"]: r for r in accuracy_validate.report()["runs"]}


@pytest.mark.parametrize("fname", sorted(RUN_OF))
def test_the_law_fitted_without_the_run_predicts_it_within_1_5_points(fname, loo):
    row = loo[RUN_OF[fname]]
    lo, hi = row["loo_interval"]
    assert abs(row["loo_predicted"] - row["published"]) <= 1.5 and lo <= row["published"] <= hi, row
