"""Hardware lookup, TPU slice naming, prices and their overrides, the measured local CPU."""
import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from clipa.costmodels import hardware
from clipa.errors import UserError

DATA = Path(hardware.__file__).parent / "data"


def test_every_name_resolves_with_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPA_CACHE_DIR", str(tmp_path))       # the cpu entry measures into a cache
    for name in hardware.names():
        if name == "tpu-v5p-N":
            continue                                            # no peak at hand: see test_v5p_needs_its_figures
        hw = hardware.get(name.replace("-N", "-8").replace("xN", "x16"))
        assert hw.n_devices >= 1 and hw.peak_flops > 0 and hw.memory_bytes > 0 and hw.cpu_cores >= 1
        assert hw.source and hw.date
        if hw.usd_per_hour:
            assert hw.price_source


def test_a100_price_is_clipa_v2_basis():
    with open(DATA / "ext_hardware_prices.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["row_id"] == "1")
    assert row["unit"] == "USD per GPU hour"
    hw = hardware.get("a100x8")
    assert hw.usd_per_hour == pytest.approx(8 * float(row["value"]))
    assert hw.cost_usd(10.0) == pytest.approx(80 * float(row["value"]))
    assert (hw.device, hw.n_devices) == ("A100-80GB", 8)


def _price_rows() -> dict:
    with open(DATA / "cloud_prices.csv") as f:
        return {r["key"]: r for r in csv.DictReader(line for line in f if not line.startswith("#"))}


def _price_entries(data: dict):
    """(where, kind, entry) for every price in hardware.yaml."""
    for name, m in data["machines"].items():
        for kind, e in m["prices"].items():
            yield name, kind, e
    for fam, f in data["tpu_families"].items():
        for kind, e in f["prices"].items():
            yield fam, kind, e
        for n, by_n in f.get("prices_by_n", {}).items():
            for kind, e in by_n.items():
                yield f"{fam}-{n}", kind, e


def test_every_listed_price_has_a_source_and_date_and_equals_its_row():
    data = yaml.safe_load((DATA / "hardware.yaml").read_text())
    rows = _price_rows()
    seen = 0
    for where, kind, e in _price_entries(data):
        assert kind in hardware.PRICING and e["source"] and e["date"], where
        if "row" not in e:                                      # the CLIPA-v2 A100 basis (ext_hardware_prices.csv)
            assert "ext_hardware_prices.csv" in e["source"], where
            continue
        row = rows[e["row"]]
        seen += 1
        kinds = {"spot": {"spot", "preemptible"}, "committed-1y": {"committed"}, "committed-3y": {"committed"}}
        assert row["key"] == f"{where}/{kind}" and row["pricing_kind"] in kinds.get(kind, {kind}), where
        if kind.startswith("committed-"):                      # the term is in the quote: '1-year Commitment'
            assert f"{kind[-2]}-year Commitment" in row["quote"], where
        assert row["region"].startswith(e["region"]) and e["date"] in row["source_date"], where
        if "usd_per_chip_hour" in e:
            assert row["unit"] == "per chip-hour" and e["usd_per_chip_hour"] == float(row["usd_per_hour"]), where
        else:
            assert "8-GPU instance-hour" in row["unit"] and e["usd_per_hour"] == float(row["usd_per_hour"]), where
    assert seen == 20        # h100x8 and TPU v3 (pod, v3-8)/v4/v5e/v5p on-demand and spot; committed: the 4 families
    for dev in data["devices"].values():
        assert dev["source"] and (dev["date"] or dev["peak_flops"] is None)
    assert "benchmarks/decode_rate.py" in data["decode"]["source"]


@pytest.mark.parametrize("key", ["check:tpu-v3-32", "check:tpu-v4-8", "check:tpu-v5e-8", "check:tpu-v5p-64"])
def test_slice_catalog_prices_equal_chip_price_times_chips(key, tmp_path):
    # Independent catalogs (SkyPilot's, from the GCP billing API) price whole slices: per-chip price x chips
    # as clipa computes it must match, which also checks the chips-per-N naming (v5p-64 = 32 chips).
    row = _price_rows()[key]
    name = key.removeprefix("check:")
    # v5p has no peak at hand; give placeholder figures so the lookup (and its price) can be read.
    f = tmp_path / "p.yaml"
    f.write_text(f"{name}: {{peak_flops: 1, memory_bytes: 1, cpu_cores: 1}}")
    hw = hardware.get(name, f)
    assert f"{hw.n_devices} chips" in row["hardware"]
    assert hw.usd_per_hour == pytest.approx(float(row["usd_per_hour"]))


@pytest.mark.parametrize("name,usd", [("h100x8", 88.4899999025753), ("tpu-v4-64", 32 * 3.22), ("tpu-v5e-64", 64 * 1.2),
                                      ("tpu-v3-8", 4 * 2.2), ("tpu-v3-64", 32 * 2.0)])
def test_cloud_prices_on_demand(name, usd):
    hw = hardware.get(name)
    assert hw.usd_per_hour == pytest.approx(usd) and hw.pricing == "on-demand"
    assert "cloud_prices.csv" in hw.price_source and "20" in hw.price_source


def test_spot_prices_where_a_source_gives_them():
    h = hardware.get("h100x8", pricing="spot")
    assert h.pricing == "spot" and h.usd_per_hour == pytest.approx(50.6095408219178)
    assert hardware.get("tpu-v4-64", pricing="spot").usd_per_hour == pytest.approx(32 * 0.966)
    for name in ("h100x8", "tpu-v3-32", "tpu-v4-8", "tpu-v5e-8"):
        assert hardware.get(name, pricing="spot").usd_per_hour < hardware.get(name).usd_per_hour, name
    a = hardware.get("a100x8", pricing="spot")                  # no spot price on the CLIPA-v2 basis
    assert a.usd_per_hour is None
    with pytest.raises(UserError, match="no spot price known for hardware 'a100x8'.*spot_usd_per_hour"):
        a.require_price()
    with pytest.raises(UserError, match="--pricing: unknown pricing 'reserved'"):
        hardware.get("a100x8", pricing="reserved")


def test_committed_prices_where_a_source_gives_them(tmp_path):
    assert hardware.get("tpu-v4-64", pricing="committed-1y").usd_per_hour == pytest.approx(32 * 2.0286)
    assert hardware.get("tpu-v5e-8", pricing="committed-3y").usd_per_hour == pytest.approx(8 * 0.54)
    for name in ("tpu-v3-32", "tpu-v4-8", "tpu-v5e-8"):
        od, y1, y3 = (hardware.get(name, pricing=k).usd_per_hour for k in ("on-demand", "committed-1y", "committed-3y"))
        assert y3 < y1 < od, name
    # A v3-8 is billed as a 'TPU v3 device', not at the pod's committed rate; no GPU machine has one at hand.
    for name in ("tpu-v3-8", "a100x8", "h100x8"):
        hw = hardware.get(name, pricing="committed-3y")
        assert hw.usd_per_hour is None, name
        with pytest.raises(UserError, match=f"no committed-3y price known for hardware '{name}'.*committed_3y_usd_per_hour"):
            hw.require_price()
    f = tmp_path / "p.yaml"
    f.write_text("tpu-v3: {committed_1y_usd_per_device_hour: 1.0}\nh100x8: {committed_3y_usd_per_hour: 40}")
    assert hardware.get("tpu-v3-8", f, pricing="committed-1y").usd_per_hour == 4.0
    assert hardware.get("h100x8", f, pricing="committed-3y").usd_per_hour == 40
    assert hardware.get("h100x8", f).usd_per_hour == pytest.approx(88.4899999025753)  # other kinds untouched
    assert set(hardware._PRICE_FIELDS) == set(hardware.PRICING)


def test_spot_override(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("a100x8: {spot_usd_per_device_hour: 1.0, source: me}\ntpu-v4: {spot_usd_per_hour: 7}")
    assert hardware.get("a100x8", f, pricing="spot").usd_per_hour == 8.0
    assert hardware.get("a100x8", f).usd_per_hour == 12.6       # the on-demand price is untouched
    assert hardware.get("tpu-v4-8", f, pricing="spot").usd_per_hour == 7


def test_v5p_needs_its_figures(tmp_path):
    hardware.check_name("tpu-v5p-64")                           # a recipe may name it
    with pytest.raises(UserError, match="tpu-v5p-64.*peak_flops, memory_bytes, cpu_cores.*--prices"):
        hardware.get("tpu-v5p-64")
    f = tmp_path / "p.yaml"
    f.write_text("tpu-v5p: {peak_flops: 4.0e+14, memory_bytes: 9.0e+10}\ntpu-v5p-64: {cpu_cores: 800}")
    hw = hardware.get("tpu-v5p-64", f)
    assert (hw.n_devices, hw.peak_flops, hw.cpu_cores) == (32, 4.0e14, 800)
    assert hw.usd_per_hour == pytest.approx(32 * 4.2)


@pytest.mark.parametrize("name,chips,cores", [
    ("tpu-v3-8", 4, 96), ("tpu-v3-256", 128, 32 * 96), ("tpu-v4-8", 4, 240), ("tpu-v4-64", 32, 8 * 240),
    ("tpu-v5e-1", 1, 24), ("tpu-v5e-8", 8, 224), ("tpu-v5e-256", 256, 32 * 224),
])
def test_tpu_slice_naming(name, chips, cores):
    hw = hardware.get(name)
    assert hw.n_devices == chips
    assert hw.cpu_cores == cores


@pytest.mark.parametrize("name", ["tpu-v4-6", "tpu-v3-4", "tpu-v5e-3", "tpu-v5e-512"])
def test_invalid_tpu_sizes(name):
    with pytest.raises(UserError, match=name):
        hardware.get(name)


def test_unknown_name_lists_known():
    with pytest.raises(UserError, match="a100x8.*tpu-v4-N.*cpu"):
        hardware.get("v100x8")


def test_missing_price_is_a_user_error_naming_the_hardware():
    hw = hardware.get("a100-40gbx8", pricing="spot")
    assert hw.usd_per_hour is None
    with pytest.raises(UserError, match="a100-40gbx8.*--prices"):
        hw.cost_usd(1.0)


def test_prices_file_overrides(tmp_path):
    f = tmp_path / "prices.yaml"
    f.write_text(yaml.safe_dump({
        "h100x8": {"usd_per_hour": 40.0, "source": "my cloud", "date": "2025-01-01"},
        "tpu-v4": {"usd_per_device_hour": 2.0},
        "tpu-v4-64": {"cpu_cores": 100},
        "a100x8": {"peak_flops": 1.0e14, "memory_bytes": 4.0e10},
    }))
    h = hardware.get("h100x8", f)
    assert h.require_price() == 40.0 and "my cloud" in h.price_source
    t = hardware.get("tpu-v4-64", f)
    assert t.usd_per_hour == pytest.approx(2.0 * 32) and t.cpu_cores == 100
    assert hardware.get("tpu-v4-8", f).usd_per_hour == pytest.approx(2.0 * 4)
    a = hardware.get("a100x8", f)
    assert (a.peak_flops, a.memory_bytes, a.usd_per_hour) == (1.0e14, 4.0e10, 12.6)


def test_several_gpu_machines_are_that_many_machines(tmp_path):
    """a100x32 is four a100x8 machines: four times their GPUs, host cores and price (each kind), the same
    GPU; a --prices entry for the machine counts four times, one for the cluster's own name once."""
    one, four = hardware.get("a100x8"), hardware.get("a100x32")
    assert (four.n_devices, four.cpu_cores, four.device, four.peak_flops, four.memory_bytes) == (
        32, 4 * one.cpu_cores, one.device, one.peak_flops, one.memory_bytes)
    assert four.usd_per_hour == pytest.approx(4 * 12.60) and four.price_basis.startswith("4 x a100x8, ")
    h2, h1 = hardware.get("h100x16", pricing="spot"), hardware.get("h100x8", pricing="spot")
    assert h2.usd_per_hour == pytest.approx(2 * h1.usd_per_hour) and h2.n_devices == 16
    assert hardware.get("a100-40gbx16", pricing="spot").usd_per_hour is None    # none for one machine either
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"a100x8": {"usd_per_hour": 10.0, "cpu_cores": 64}, "h100x24": {"usd_per_hour": 99.0}}))
    mine = hardware.get("a100x32", f)
    assert (mine.usd_per_hour, mine.cpu_cores) == (40.0, 256) and mine.price_given
    assert hardware.get("h100x24", f).usd_per_hour == 99.0
    for bad in ("a100x12", "a100x4", "h100x0"):
        with pytest.raises(UserError, match=f"hardware '{bad}': .* machines have 8 GPUs: .*xN takes N a multiple of 8"):
            hardware.get(bad)
    f.write_text("a100x12: {usd_per_hour: 3}")
    with pytest.raises(UserError, match=f"--prices {f}: hardware 'a100x12'"):
        hardware.get("a100x8", f)


def test_a_recipe_on_four_machines_costs_the_same_device_hours_in_a_quarter_of_the_time():
    from clipa import recipe
    from clipa.costmodels import throughput
    from clipa.costmodels.predict import predict_recipe

    rec = recipe.load(Path(recipe.__file__).parents[1] / "recipes" / "published" / "clipa_v2_h14_datacomp_70_224.yaml")
    one, four = predict_recipe(rec, "a100x8"), predict_recipe(rec, "a100x32")
    assert four.device_hours == pytest.approx(one.device_hours) and four.cost_usd == pytest.approx(one.cost_usd)
    assert four.wall_hours == pytest.approx(one.wall_hours / 4)
    # linear scaling is an assumption, and the plan says so until the user's runs calibrate it
    assert throughput.uncalibrated_note(hardware.get("a100x8")) is None
    assert "its 4 machines assumed to add up" in throughput.uncalibrated_note(hardware.get("a100x32"))


@pytest.mark.parametrize("content,match", [
    ("h100x8: {usd_per_hr: 3}", "h100x8.usd_per_hr: unknown field"),
    ("h100x8: {usd_per_hour: -1}", "h100x8.usd_per_hour: must be a finite number"),
    ("h100x8: {usd_per_hour: cheap}", "h100x8.usd_per_hour: must be a finite number"),
    ("h100x8: {usd_per_hour: .nan}", "h100x8.usd_per_hour: must be a finite number >= 0, got nan"),
    ("tpu-v4: {spot_usd_per_device_hour: .inf}", "tpu-v4.spot_usd_per_device_hour: must be a finite number"),
    ("h100x8: 3", "h100x8: must be a mapping"),
    ("v100x8: {usd_per_hour: 3}", "'v100x8' is not a hardware name"),
    ("- a\n- b", "must be a mapping"),
    ("h100x8: {usd_per_hour: [1", "not a valid prices file"),
])
def test_bad_prices_file(tmp_path, content, match):
    f = tmp_path / "p.yaml"
    f.write_text(content)
    with pytest.raises(UserError, match=match) as e:
        hardware.get("h100x8", f)
    assert str(f) in str(e.value)


def test_missing_prices_file(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: prices file not found"):
        hardware.get("a100x8", tmp_path / "nope.yaml")


def test_cpu_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPA_CACHE_DIR", str(tmp_path))
    hw = hardware.get("cpu")
    assert hw.cpu_cores == os.cpu_count() and hw.n_devices == 1 and hw.usd_per_hour == 0.0
    meminfo_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    assert hw.memory_bytes == meminfo_kb * 1024
    cached = json.loads((tmp_path / "cpu_peak.json").read_text())
    assert cached["peak_flops"] == hw.peak_flops > 1e8           # any CPU of this decade does > 0.1 GFLOP/s
    assert "measured" in hw.source

    def fail(*a, **k):
        raise AssertionError("re-measured although cached")
    monkeypatch.setattr(hardware, "measure_cpu_flops", fail)
    assert hardware.get("cpu").peak_flops == hw.peak_flops


def test_decode_rates_fall_with_size():
    rates, source = hardware.decode_rates()
    sizes = sorted(rates)
    assert len(sizes) >= 3 and "measured" in source
    assert rates[sizes[-1]] < rates[sizes[0]]


def test_gpu_names_map_to_the_machine_whose_peak_applies():
    assert hardware.gpu_machine("NVIDIA H100 80GB HBM3") == "h100x8"
    assert hardware.gpu_machine("NVIDIA H200") == "h100x8"  # same dense bf16 peak as H100 SXM
    assert hardware.gpu_machine("NVIDIA A100-SXM4-80GB") == "a100x8"
    assert hardware.gpu_machine("Tesla V100-SXM2-16GB") is None
