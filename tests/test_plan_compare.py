"""clipa-plan on priced hardware: h100x8 and TPU plans with cited prices, spot plans, the side-by-side
comparison of several --hw targets, unpriced plans that load again, and bad price files. Real
subprocesses for the CLI."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from clipa import recipe as recipe_mod
from clipa.costmodels import hardware
from clipa.errors import UserError
from clipa.planner import compare, spot

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
UNCALIBRATED = "throughput uncalibrated on {}: utilisation carried over from the A100 fit"


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "clipa.cli.plan", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=600)


def _plan(tmp_path, *args):
    out = tmp_path / "plan.yaml"
    return _cli(tmp_path, "--out", out, *args), out


def _plan_json(tmp_path, *args):
    r, out = _plan(tmp_path, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), recipe_mod.load(out)


@pytest.mark.parametrize("hw", ["h100x8", "tpu-v4-64"])
def test_budget_plan_with_cited_price(tmp_path, hw):
    obj, rec = _plan_json(tmp_path, "--budget", "10000", "--hw", hw)
    price = hardware.get(hw).usd_per_hour
    assert rec.hardware.name == hw and obj["hardware"] == hw
    assert 0 < obj["cost_usd"] <= 10000
    assert obj["cost_usd"] == pytest.approx(obj["wall_hours"] * price, rel=1e-3)  # the cited price, not a guess
    assert UNCALIBRATED.format(hw) in obj["notes"][0]
    # the plan says which price it assumed, and where it comes from
    assert (obj["usd_per_hour"], obj["pricing"]) == (pytest.approx(price), "on-demand")
    assert "costmodels/data/cloud_prices.csv" in obj["price_source"] and obj["price_basis"]
    r, _ = _plan(tmp_path, "--budget", "10000", "--hw", hw)
    assert f"price: ${price:,.2f}/hour for {hw} (on-demand; " in " ".join(r.stdout.split()), r.stdout[-2000:]


def test_a100_plan_is_calibrated(tmp_path):
    obj, _ = _plan_json(tmp_path, "--budget", "3000", "--hw", "a100x8")
    assert obj["notes"] == []


@pytest.mark.parametrize("hw,said", [("a100x8", None), ("h100x8", UNCALIBRATED.format("h100x8")),
                                     ("a100x32", "throughput uncalibrated on a100x32: its 4 machines assumed to add up")])
def test_predict_says_when_its_throughput_is_uncalibrated_as_a_plan_does(tmp_path, hw, said):
    from clipa.planner import published

    path = tmp_path / "r.yaml"
    recipe_mod.dump(next(iter(published.load_all().values())), path)
    r = _cli(tmp_path, "--predict", path, "--hw", hw, "--json")
    assert r.returncode == 0, r.stderr
    notes = json.loads(r.stdout)["notes"]
    assert (notes == []) if said is None else (len(notes) == 1 and notes[0].startswith(said)), notes
    printed = " ".join(_cli(tmp_path, "--predict", path, "--hw", hw).stdout.split())
    assert (said in printed) if said else ("throughput uncalibrated" not in printed)


def test_spot_plan_says_so_and_checkpoints_often(tmp_path):
    obj, rec = _plan_json(tmp_path, "--budget", "10000", "--hw", "h100x8", "--pricing", "spot")
    spot_price = hardware.get("h100x8", pricing="spot").usd_per_hour
    assert rec.hardware.pricing == "spot" and rec.hardware.usd_per_hour == pytest.approx(spot_price)
    assert obj["cost_usd"] == pytest.approx(obj["wall_hours"] * spot_price, rel=1e-3)
    minutes = rec.train.checkpoint_every_minutes
    assert 0 < minutes <= spot.checkpoint_minutes()
    # the stated assumption: half an interval lost per preemption, one preemption per HOURS_BETWEEN_PREEMPTIONS
    assert (minutes / 2) / (spot.HOURS_BETWEEN_PREEMPTIONS * 60) <= spot.LOST_FRACTION <= 0.05
    assert any(n.startswith("spot pricing on h100x8") and f"every {minutes:g} min" in n for n in obj["notes"])
    ondemand, _ = _plan_json(tmp_path, "--budget", "10000", "--hw", "h100x8")
    assert obj["predicted_top1"] >= ondemand["predicted_top1"]       # the same dollars buy more on spot


def test_committed_plan_is_priced_at_the_commitment_and_says_what_the_term_costs(tmp_path):
    obj, rec = _plan_json(tmp_path, "--budget", "10000", "--hw", "tpu-v4-64", "--pricing", "committed-1y")
    price = 32 * 2.0286                                        # cloud_prices.csv tpu-v4/committed-1y, 32 chips
    assert rec.hardware.pricing == "committed-1y" and rec.hardware.usd_per_hour == pytest.approx(price)
    assert obj["cost_usd"] == pytest.approx(obj["wall_hours"] * price, rel=1e-3)
    assert obj["cost_usd"] <= 10000 < obj["wall_hours"] * hardware.get("tpu-v4-64").usd_per_hour
    note = next(n for n in obj["notes"] if n.startswith("committed-1y pricing on tpu-v4-64"))
    assert "8,760 hours of the term whether used or not" in note and f"${price * 8760:,.0f}" in note
    # A GPU machine has no committed price in the sources at hand: the one line says how to give one.
    r, _ = _plan(tmp_path, "--budget", "10000", "--hw", "h100x8", "--pricing", "committed-3y")
    assert r.returncode == 2 and "no committed-3y price known for hardware 'h100x8'" in r.stderr
    assert "committed_3y_usd_per_hour" in r.stderr and "Traceback" not in r.stderr


def test_a_recipe_carries_the_price_its_predictions_used(tmp_path):
    # clipa-run takes no --prices: a plan priced by the user's file must write that price into its recipe,
    # or the run's achieved cost (and a later --predict) would be at the catalog's price.
    mine = tmp_path / "mine.yaml"
    mine.write_text("a100x8: {usd_per_hour: 5.0, source: my quote}\n")
    obj, rec = _plan_json(tmp_path, "--budget", "10000", "--hw", "a100x8", "--prices", str(mine))
    assert (rec.hardware.usd_per_hour, rec.hardware.pricing) == (5.0, "on-demand")
    assert obj["usd_per_hour"] == 5.0 and obj["price_source"] == f"--prices {mine} [a100x8]: my quote"
    assert obj["cost_usd"] == pytest.approx(obj["wall_hours"] * 5.0, rel=1e-3)
    recipe = tmp_path / "plan.yaml"
    again = tmp_path / "again.yaml"
    r = _cli(tmp_path, "--predict", recipe, "--json", "--out", again)
    assert r.returncode == 0, r.stderr
    predicted = json.loads(r.stdout)
    assert predicted["cost_usd"] == pytest.approx(obj["cost_usd"], rel=1e-3)
    assert (predicted["usd_per_hour"], predicted["price_source"]) == (5.0, "the recipe's hardware.usd_per_hour")
    # A prices file that prices the recipe's hardware wins over the recipe's own price, and is written.
    other = tmp_path / "other.yaml"
    other.write_text("a100x8: {usd_per_device_hour: 1.0}\n")
    r = _cli(tmp_path, "--predict", recipe, "--json", "--prices", other, "--out", again)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cost_usd"] == pytest.approx(obj["wall_hours"] * 8.0, rel=1e-3)
    assert recipe_mod.load(again).hardware.usd_per_hour == 8.0
    # --predict on other hardware writes a recipe for that hardware, at its price.
    r = _cli(tmp_path, "--predict", recipe, "--hw", "h100x8", "--out", again)
    assert r.returncode == 0, r.stderr
    moved = recipe_mod.load(again).hardware
    assert (moved.name, moved.usd_per_hour) == ("h100x8", pytest.approx(hardware.get("h100x8").usd_per_hour))
    # So do the pilots of a plan priced by the user's file.
    r = _cli(tmp_path, "--pilot", "--budget", "10000", "--hw", "a100x8", "--prices", mine, "--out", tmp_path / "pilots")
    assert r.returncode == 0, r.stderr
    pilots = [recipe_mod.load(p) for p in (tmp_path / "pilots").glob("*-pilot*.yaml")]
    assert len(pilots) == 3 and {p.hardware.usd_per_hour for p in pilots} == {5.0}


def test_spot_never_checkpoints_less_often_than_the_recipe():
    from clipa.planner import published

    rec = next(iter(published.load_all().values()))
    for every in (5.0, 600.0):
        rec2 = rec.model_copy(update={"train": rec.train.model_copy(update={"checkpoint_every_minutes": every})})
        got = spot.apply(rec2).train.checkpoint_every_minutes
        assert got == min(every, spot.checkpoint_minutes())
    assert spot.expected_loss(spot.checkpoint_minutes()) <= spot.LOST_FRACTION


def test_comparison_prints_side_by_side_and_writes_the_pick(tmp_path):
    names = ["a100x8", "h100x8", "tpu-v4-64", "tpu-v5e-64"]
    r, out = _plan(tmp_path, "--budget", "10000", "--hw", ",".join(names))
    assert r.returncode == 0, r.stderr
    assert "Best plan per hardware (on-demand prices)" in r.stdout and "* picked:" in r.stdout
    for n in names:
        assert n in r.stdout
    obj, rec = _plan_json(tmp_path, "--budget", "10000", "--hw", ",".join(names))
    rows = obj["hardware_comparison"]
    assert [row["hardware"] for row in rows] == names
    picked = [row for row in rows if row["picked"]]
    assert len(picked) == 1 and rec.hardware.name == picked[0]["hardware"] == obj["hardware"]
    assert picked[0]["predicted_top1"] == max(row["predicted_top1"] for row in rows)
    for row in rows:
        assert row["cost_usd"] <= 10000 and row["wall_hours"] > 0 and row["price_source"]
        assert (UNCALIBRATED.format(row["hardware"]) in " ".join(row["notes"])) == (row["hardware"] != "a100x8")


def test_comparison_keeps_a_target_it_cannot_plan(tmp_path):
    # a100x8 has no spot price on its cited basis: its row says why, the others still compete
    obj, rec = _plan_json(tmp_path, "--budget", "5000", "--hw", "a100x8,tpu-v5e-64", "--pricing", "spot")
    a100, v5e = obj["hardware_comparison"]
    assert "no spot price known for hardware 'a100x8'" in a100["error"] and not a100["picked"]
    assert v5e["picked"] and rec.hardware.name == "tpu-v5e-64" and rec.hardware.pricing == "spot"
    with pytest.raises(UserError, match="no hardware could be planned: a100x8: .*a100-40gbx8: "):
        compare.plan_all(["a100x8", "a100-40gbx8"], pricing="spot", budget_usd=5000, device_hours=None,
                         dataset="laion-2b", quiet=True)


def test_unpriced_plan_writes_a_recipe_clipa_loads(tmp_path):
    r, out = _plan(tmp_path, "--gpu-hours", "2000", "--hw", "a100x8", "--pricing", "spot")
    assert r.returncode == 0, r.stderr
    rec = recipe_mod.load(out)
    assert rec.predictions.cost_usd is None and rec.hardware.usd_per_hour is None
    assert all(s.cost_usd is None for s in rec.predictions.stages)
    again = _cli(tmp_path, "--predict", out, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cost_usd"] is None          # still spot, still unpriced: never $0


@pytest.mark.parametrize("args,needle", [
    (("--budget", "100", "--hw", "a100x8", "--pricing", "reserved"), "--pricing: unknown pricing 'reserved'"),
    (("--budget", "100", "--hw", "a100x8,,h100x8"), "--hw: empty name"),
    (("--budget", "100", "--hw", "a100x8,v100x8"), "unknown hardware 'v100x8'"),
    (("--budget", "10000", "--hw", "tpu-v5p-64"), "'tpu-v5p-64': no source at hand gives its peak_flops"),
])
def test_cli_errors_are_one_line(tmp_path, args, needle):
    r, _ = _plan(tmp_path, *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_nan_price_refused_in_one_line(tmp_path):
    f = tmp_path / "prices.yaml"
    f.write_text(yaml.safe_dump({"h100x8": {"usd_per_hour": float("nan")}}))
    r, _ = _plan(tmp_path, "--budget", "10000", "--hw", "h100x8", "--prices", str(f))
    assert r.returncode == 2 and "h100x8.usd_per_hour: must be a finite number >= 0, got nan" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
