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
        hw = hardware.get(name.replace("-N", "-8"))
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


def test_every_listed_price_has_a_source_and_date():
    data = yaml.safe_load((DATA / "hardware.yaml").read_text())
    for name, m in data["machines"].items():
        if m["usd_per_hour"] is not None:
            assert m["price_source"] and m["price_date"], name
    for dev in data["devices"].values():
        assert dev["source"] and dev["date"]
    assert "benchmarks/decode_rate.py" in data["decode"]["source"]


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
    hw = hardware.get("h100x8")
    assert hw.usd_per_hour is None
    with pytest.raises(UserError, match="h100x8.*--prices"):
        hw.cost_usd(1.0)
    with pytest.raises(UserError, match="tpu-v4-64"):
        hardware.get("tpu-v4-64").require_price()


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


@pytest.mark.parametrize("content,match", [
    ("h100x8: {usd_per_hr: 3}", "h100x8.usd_per_hr: unknown field"),
    ("h100x8: {usd_per_hour: -1}", "h100x8.usd_per_hour: must be a number"),
    ("h100x8: {usd_per_hour: cheap}", "h100x8.usd_per_hour: must be a number"),
    ("h100x8: 3", "h100x8: must be a mapping"),
    ("v100x8: {usd_per_hour: 3}", "'v100x8' is not a hardware name"),
    ("- a\n- b", "must be a mapping"),
    ("h100x8: {usd_per_hour: [1", "not valid YAML"),
])
def test_bad_prices_file(tmp_path, content, match):
    f = tmp_path / "p.yaml"
    f.write_text(content)
    with pytest.raises(UserError, match=match) as e:
        hardware.get("h100x8", f)
    assert str(f) in str(e.value)


def test_missing_prices_file(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: cannot read"):
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


def test_measured_cpu_flops_is_a_real_measurement():
    # Two short measurements of the same machine agree within an order of magnitude (shared CI cores).
    a, b = hardware.measure_cpu_flops(n=256, seconds=0.05), hardware.measure_cpu_flops(n=256, seconds=0.05)
    assert 0.1 < a / b < 10


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
