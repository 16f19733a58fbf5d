"""Hardware and prices: what a machine or TPU slice can compute, hold and cost.

Names: ``a100x8``, ``a100-40gbx8``, ``h100x8`` (8-GPU machines; ``a100x32`` is four a100x8 machines, any
multiple of 8 GPUs, priced and costed as that many machines: a cluster of nodes), ``tpu-v3-N``, ``tpu-v4-N``,
``tpu-v5e-N``, ``tpu-v5p-N`` (slices; N as in Google's slice names: TensorCores for v3/v4/v5p, chips
for v5e, see ``data/hardware.yaml``) and ``cpu`` (this machine, its peak measured once and cached).

Figures and their sources live in ``data/hardware.yaml``; cloud prices are rows of
``data/cloud_prices.csv``, per pricing kind (``PRICING``: on-demand, spot/preemptible, and 1- or 3-year
committed-use, where a source gives one). A user file (``prices=``, the CLIs' ``--prices FILE``) overrides
them; it is a YAML mapping from a name (``h100x8``, ``tpu-v4-64``) or a TPU family (``tpu-v4``) to fields::

    h100x8: {usd_per_hour: 80.0, spot_usd_per_hour: 30.0, source: "my cloud's price page", date: "2025-01-01"}
    tpu-v4: {usd_per_device_hour: 3.0, source: "...", date: "..."}   # per chip-hour

Fields: usd_per_hour (whole machine/slice), usd_per_device_hour, the same prefixed spot_, committed_1y_ or
committed_3y_ for those prices, peak_flops (per device, FLOP/s), memory_bytes (per device), cpu_cores
(total), source, date.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Optional

import yaml

from clipa import fs
from clipa.errors import UserError, load_yaml
from clipa.pricing import PRICING

DATA = Path(__file__).parent / "data" / "hardware.yaml"
# The override fields that set the price of each pricing kind (PRICING): (whole machine, per device).
_PRICE_FIELDS = {"on-demand": ("usd_per_hour", "usd_per_device_hour"),
                 "spot": ("spot_usd_per_hour", "spot_usd_per_device_hour"),
                 "committed-1y": ("committed_1y_usd_per_hour", "committed_1y_usd_per_device_hour"),
                 "committed-3y": ("committed_3y_usd_per_hour", "committed_3y_usd_per_device_hour")}
_OVERRIDE_FIELDS = {*(f for pair in _PRICE_FIELDS.values() for f in pair), "peak_flops", "memory_bytes", "cpu_cores",
                    "source", "date"}
_TPU_RE = re.compile(r"^(tpu-v(?:3|4|5e|5p))-(\d+)$")
_GPUS_RE = re.compile(r"^(.+)x(\d+)$")  # a100x32: 32 GPUs of the a100x8 machines


@dataclass(frozen=True)
class Hardware:
    """One machine or slice. FLOP/s and bytes are per device; price and CPU cores are for the whole."""

    name: str
    device: str
    n_devices: int
    peak_flops: float                 # dense bf16 FLOP/s per device (cpu: measured fp32 matmul)
    memory_bytes: float               # per device
    usd_per_hour: Optional[float]     # whole machine/slice; None = unknown, see require_price
    cpu_cores: int                    # total host cores (vCPUs) for data loading
    source: str
    date: str
    price_source: str = ""            # where usd_per_hour comes from, with its date and region
    pricing: str = "on-demand"        # which price usd_per_hour is: one of PRICING
    price_basis: str = ""             # the price in a few words (provider, machine, region, month)
    price_given: bool = False         # usd_per_hour is the user's (a --prices file), not the cost models'

    def require_price(self) -> float:
        """$/hour of the whole machine, or a UserError saying how to give one."""
        if self.usd_per_hour is None:
            field = _PRICE_FIELDS[self.pricing][0]
            raise UserError(f"no {self.pricing} price known for hardware {self.name!r}: give one with --prices FILE "
                            f"(YAML, e.g. '{self.name}: {{{field}: 12.5, source: ..., date: ...}}')")
        return self.usd_per_hour

    def cost_usd(self, wall_hours: float) -> float:
        """Dollars for ``wall_hours`` of the whole machine/slice."""
        return wall_hours * self.require_price()


@functools.lru_cache(maxsize=1)
def _data() -> dict:
    with open(DATA) as f:
        return yaml.safe_load(f)


def decode_rates() -> tuple[dict[int, float], str]:
    """Measured JPEG decode rate (images/s per core) by target side (px), and its source."""
    d = _data()["decode"]
    return {int(k): float(v) for k, v in d["images_per_s_per_core"].items()}, d["source"]


def names() -> list[str]:
    """Known names; TPU families are listed with their N placeholder, GPU machines once (a100x8) and as
    clusters of them (a100xN)."""
    d = _data()
    return (list(d["machines"]) + [_GPUS_RE.sub(r"\1xN", m) for m in d["machines"]]
            + [f"{fam}-N" for fam in d["tpu_families"]] + ["cpu"])


def gpu_nodes(name: str) -> Optional[tuple[str, int]]:
    """(machine, how many) of a GPU name: ('a100x8', 4) for a100x32, ('a100x8', 1) for a100x8; None for a
    name that is no GPU machine's; UserError for a GPU count that is not a whole number of machines."""
    m = _GPUS_RE.match(name)
    if m is None:
        return None
    for machine, entry in _data()["machines"].items():
        per = int(entry["n_devices"])
        if machine == f"{m.group(1)}x{per}":
            n = int(m.group(2))
            if n < per or n % per:
                raise UserError(f"hardware {name!r}: {machine} machines have {per} GPUs: {m.group(1)}xN takes N a "
                                f"multiple of {per} (N/{per} machines)")
            return machine, n // per
    return None


def machine_count(name: str) -> int:
    """How many GPU machines ``name`` is (4 for a100x32); 1 for one machine, a TPU slice or the cpu."""
    nodes = gpu_nodes(name)
    return nodes[1] if nodes else 1


def _price(entry: Optional[dict], n_devices: int) -> dict:
    """Hardware fields from a price entry of hardware.yaml: $/hour of the whole machine/slice and its source."""
    if entry is None:
        return {"usd_per_hour": None}
    usd = entry["usd_per_hour"] if "usd_per_hour" in entry else entry["usd_per_chip_hour"] * n_devices
    where = ", ".join(str(x) for x in (entry.get("region"), entry["date"]) if x)
    return {"usd_per_hour": float(usd), "price_source": f"{entry['source']} ({where})", "price_basis": entry["basis"]}


def _float(x) -> Optional[float]:
    return None if x is None else float(x)


def _machine(name: str, pricing: str) -> Hardware:
    """A GPU machine, or ``k`` of them (a100x32 = 4 x a100x8): k times its devices, host cores and price.
    The throughput model takes devices as adding up, as it does across a TPU slice's hosts."""
    d = _data()
    machine, k = gpu_nodes(name)
    m = d["machines"][machine]
    dev = d["devices"][m["device"]]
    n = int(m["n_devices"]) * k
    price = _price(m["prices"].get(pricing), n)
    if k > 1 and price["usd_per_hour"] is not None:
        price.update(usd_per_hour=price["usd_per_hour"] * k, price_basis=f"{k} x {machine}, {price['price_basis']}")
    return Hardware(name=name, device=m["device"], n_devices=n, peak_flops=_float(dev["peak_flops"]),
                    memory_bytes=_float(dev["memory_bytes"]), cpu_cores=int(m["cpu_cores"]) * k,
                    source=f"{dev['source']}; cores: {m['cpu_source']}" + (f"; {k} machines" if k > 1 else ""),
                    date=str(dev["date"]), pricing=pricing, **price)


def _valid_tpu_n(family: str, n: int) -> bool:
    if family == "tpu-v5e":
        return n in (1, 4, 8, 16, 32, 64, 128, 256)
    top = {"tpu-v3": 2048, "tpu-v4": 8192}.get(family, math.inf)  # v5p: no largest size at hand
    return n % 8 == 0 and 8 <= n <= top


def _tpu(family: str, n: int, name: str, pricing: str = "on-demand") -> Hardware:
    d = _data()
    fam = d["tpu_families"][family]
    if not _valid_tpu_n(family, n):
        raise UserError(f"hardware {name!r}: {family} slices are {family}-N with N {fam['valid_n']}")
    chips = max(1, int(n * fam["chips_per_n"]))
    dev = d["devices"][fam["device"]]
    cores = None
    if fam["chips_per_host"] is not None:
        cores = _hosts(fam, chips) * int(fam["cpu_cores_per_host"])
        cores = int(fam.get("cpu_cores_small_slices", {}).get(chips, cores))
    prices = fam.get("prices_by_n", {}).get(n, fam["prices"])
    return Hardware(name=name, device=fam["device"], n_devices=chips, peak_flops=_float(dev["peak_flops"]),
                    memory_bytes=_float(dev["memory_bytes"]), cpu_cores=cores,
                    source=f"{dev['source']}; cores: {fam['cpu_source']}", date=str(dev["date"]), pricing=pricing,
                    **_price(prices.get(pricing), chips))


def _hosts(fam: dict, chips: int) -> int:
    return max(1, -(-chips // fam["chips_per_host"]))


def tpu_hosts(name: str) -> Optional[int]:
    """Hosts (TPU VM workers) of the slice ``name`` (tpu-v4-64: 32 chips / 4 per host = 8); None when
    ``name`` is no TPU slice or its family's chips per host are in no source at hand (v5p)."""
    m = _TPU_RE.match(name)
    if not m:
        return None
    fam = _data()["tpu_families"][m.group(1)]
    if fam["chips_per_host"] is None:
        return None
    return _hosts(fam, get(name).n_devices)


# --- the local CPU, measured -------------------------------------------------------------------

def _cache_dir() -> Path:
    return Path(os.environ.get("CLIPA_CACHE_DIR", Path.home() / ".cache" / "clipa"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _mem_total() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024          # kB -> bytes
    except OSError:
        pass
    raise UserError("hardware 'cpu': cannot read MemTotal from /proc/meminfo; give memory_bytes with --prices")


def measure_cpu_flops(n: int = 1024, seconds: float = 0.5) -> float:
    """Best float32 matmul FLOP/s numpy reaches on this machine (all threads BLAS uses)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b                                                       # warm-up (BLAS thread pool)
    best, t_end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        best = max(best, 2.0 * n ** 3 / dt)
        if time.perf_counter() > t_end:
            return best


def cpu_peak_flops() -> tuple[float, str]:
    """Measured peak of this machine, cached in ~/.cache/clipa/cpu_peak.json (keyed by CPU and cores)."""
    path = _cache_dir() / "cpu_peak.json"
    key = f"{_cpu_model()} x{os.cpu_count()}"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return float(cached["peak_flops"]), cached["source"]
    except (OSError, ValueError, KeyError):
        pass
    peak = measure_cpu_flops()
    src = f"measured by clipa.costmodels.hardware.measure_cpu_flops (numpy float32 1024^3 matmul) on {date.today()}, {key}"
    fs.write_atomic(path, json.dumps({"key": key, "peak_flops": peak, "source": src}))  # never half a file
    return peak, src


def _cpu() -> Hardware:
    peak, src = cpu_peak_flops()
    return Hardware(name="cpu", device=_cpu_model(), n_devices=1, peak_flops=peak, memory_bytes=_mem_total(),
                    usd_per_hour=0.0, cpu_cores=os.cpu_count() or 1, source=f"{src}; memory: /proc/meminfo MemTotal",
                    date=str(date.today()), price_source="local machine: $0/hour by default", price_basis="local machine")


# --- overrides ---------------------------------------------------------------------------------

def load_prices(path: Path) -> dict:
    """Read and check a user's override file; UserError naming the file and the bad key/field."""
    path = Path(path)
    data = load_yaml(path, "prices file", f"--prices {path}") or {}
    if not isinstance(data, dict):
        raise UserError(f"--prices {path}: must be a mapping from hardware name to fields")
    d = _data()
    for key, fields in data.items():
        try:
            machines = gpu_nodes(str(key))
        except UserError as e:
            raise UserError(f"--prices {path}: {e}") from None
        if not (key in d["tpu_families"] or key == "cpu" or _TPU_RE.match(str(key)) or machines):
            raise UserError(f"--prices {path}: {key!r} is not a hardware name; known: {', '.join(names())} "
                            f"(or a TPU family: {', '.join(d['tpu_families'])})")
        if not isinstance(fields, dict):
            raise UserError(f"--prices {path}: {key}: must be a mapping of fields, got {fields!r}")
        for field, value in fields.items():
            if field not in _OVERRIDE_FIELDS:
                raise UserError(f"--prices {path}: {key}.{field}: unknown field; known: {', '.join(sorted(_OVERRIDE_FIELDS))}")
            if field in ("source", "date"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserError(f"--prices {path}: {key}.{field}: must be a finite number >= 0, got {value!r}")
    return data


def _apply(hw: Hardware, fields: dict, where: str, machines: int = 1) -> Hardware:
    """``hw`` with a --prices entry's fields; ``machines``: how many of the entry's machine ``hw`` is (its
    whole-machine price and host cores count that many times)."""
    changes = {}
    for k in ("peak_flops", "memory_bytes"):
        if k in fields:
            changes[k] = float(fields[k])
    if "cpu_cores" in fields:
        changes["cpu_cores"] = int(fields["cpu_cores"]) * machines
    whole, per_device = _PRICE_FIELDS[hw.pricing]
    if per_device in fields:
        changes["usd_per_hour"] = float(fields[per_device]) * hw.n_devices
    if whole in fields:
        changes["usd_per_hour"] = float(fields[whole]) * machines
    if "usd_per_hour" in changes:
        cited = (f": {fields['source']}" if "source" in fields else "") + (f" ({fields['date']})" if "date" in fields else "")
        changes.update(price_source=where + cited, price_basis=where, price_given=True)
    return replace(hw, **changes)


def gpu_machine(device_name: str) -> Optional[str]:
    """The machine entry whose per-device peak applies to a GPU named ``device_name`` (as CUDA reports
    it), or None. H200 has the H100 SXM's dense bf16 peak (NVIDIA H200 datasheet, 2024): h100x8 applies."""
    for keys, machine in ((("H100", "H200"), "h100x8"), (("A100",), "a100x8")):
        if any(k in device_name for k in keys):
            return machine
    return None


def check_pricing(pricing: str) -> None:
    """UserError unless ``pricing`` is one of PRICING."""
    if pricing not in PRICING:
        raise UserError(f"--pricing: unknown pricing {pricing!r}; known: {', '.join(PRICING)}")


def check_name(name: str) -> None:
    """UserError unless ``name`` is known hardware (without measuring the local CPU)."""
    if name == "cpu" or gpu_nodes(name) is not None:
        return
    if (m := _TPU_RE.match(name)) is not None:
        _tpu(m.group(1), int(m.group(2)), name)  # raises on an invalid slice size
        return
    raise UserError(f"unknown hardware {name!r}; known: {', '.join(names())}")


def get(name: str, prices: Optional[Path] = None, pricing: str = "on-demand") -> Hardware:
    """Look hardware up by name, priced at ``pricing`` (one of PRICING), applying the overrides in
    ``prices`` (a YAML file) if given. UserError if a figure the cost models need is in no source."""
    check_pricing(pricing)
    d = _data()
    family, machines = None, 1
    if name == "cpu":
        hw = replace(_cpu(), pricing=pricing)     # the local machine costs $0 however it is priced
    elif (m := _TPU_RE.match(name)) is not None:
        family = m.group(1)
        hw = _tpu(family, int(m.group(2)), name, pricing)
    elif (nodes := gpu_nodes(name)) is not None:
        if nodes[1] > 1:  # a cluster takes its machine's overrides (times its machines), then its own
            family, machines = nodes
        hw = _machine(name, pricing)
    else:
        raise UserError(f"unknown hardware {name!r}; known: {', '.join(names())}")
    if prices is not None:
        over = load_prices(prices)
        for key, times in ((family, machines), (name, 1)):  # family first, the exact name wins
            if key is not None and key in over:
                hw = _apply(hw, over[key], f"--prices {prices} [{key}]", times)
    missing = [f for f in ("peak_flops", "memory_bytes", "cpu_cores") if getattr(hw, f) is None]
    if missing:
        raise UserError(f"hardware {name!r}: no source at hand gives its {', '.join(missing)} "
                        f"(costmodels/data/hardware.yaml); give them with --prices FILE, e.g. "
                        f"'{name}: {{{', '.join(f + ': ...' for f in missing)}}}'")
    return hw
