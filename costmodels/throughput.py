"""Time of a training stage: compute-bound (peak x fitted utilisation) or data-bound (JPEG decode).

Achieved FLOP/s per device = peak x utilisation. Utilisation is fitted (scipy, ``fit()``) to the
A100 GPU-hours of the published CLIPA runs: CLIPA-v2's estimates (``data/published_clipa_results.csv``,
H/14, 12.8B samples at 70/84 px + masked fine-tunes) and CLIPA-v1's runs on one 8x A100 server
(``data/ext_clipa_results.csv`` rows 40-42 and 46-48: B/16 and L/16 at 17-50 tokens). The form:
each sample costs its FLOPs at ``u_max`` of peak plus a fixed ``t0`` seconds per device
(per-step overheads, host work) that small samples cannot hide:

    time per sample per device = F / (peak * u_max) + t0
    =>  u(F) = u_max * F / (F + t0 * peak * u_max),   F = training FLOPs per sample.

So few tokens (and small towers) use the device worse: CLIPA-v1's B/16 at 50 tokens implies ~17%
of peak, H/14 at 36 tokens ~26%. The fit assumes no activation recomputation in those runs (not
stated). "Utilisation" counts hardware FLOPs, so a recomputed forward costs time.

The fitted parameters are stored in ``data/utilisation_fit.yaml`` (so importing this module needs
no scipy); ``tests/test_costmodels_throughput.py`` checks that ``fit()`` reproduces them.
Refit: ``python -m clipa.costmodels.throughput --refit``. ``fit_report()`` lists the residuals and
held-out OpenCLIP runs.

Data bound: samples/s = decode rate per core at the stage's image size (measured by
``benchmarks/decode_rate.py``, ``data/hardware.yaml``) x the machine's CPU cores.
"""
from __future__ import annotations

import csv
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from clipa import encoders, fs
from clipa.costmodels import accuracy_data, flops, hardware
from clipa.encoders import Encoder

DATA = Path(__file__).parent / "data"
FIT_FILE = DATA / "utilisation_fit.yaml"

# CLIPA-v2's fine-tuning defaults: 30% random mask at 224 px, 40% at 336 px, text length 32
# (ext_clipa_results.csv rows 2/5/8/9: ft_stage1_mask_ratio, ft_stage2_mask_ratio, ft_text_len).
CLIPA_V2_FT_MASK = {224: 0.3, 336: 0.4}
CLIPA_V2_FT_TEXT_LEN = 32


@dataclass
class StageTime:
    samples_per_s: float          # whole machine/slice
    device_hours: float           # GPU- or TPU-chip-hours
    wall_hours: float
    utilisation: float            # fraction of peak used when compute-bound
    bound: str                    # "compute" | "data"
    compute_samples_per_s: float = 0.0
    data_samples_per_s: float = 0.0


@functools.lru_cache(maxsize=1)
def fitted_params() -> dict:
    """The stored fit: {'u_max': fraction of peak, 't0_s': seconds per sample per device}."""
    with open(FIT_FILE) as f:
        return yaml.safe_load(f)["params"]


def utilisation_from(params: dict, train_flops_per_sample: float, peak_flops: float) -> float:
    """u(F) = u_max * F / (F + t0 * peak * u_max) for ``params`` = {'u_max', 't0_s'}."""
    u_max, t0 = params["u_max"], params["t0_s"]
    return u_max * train_flops_per_sample / (train_flops_per_sample + t0 * peak_flops * u_max)


def utilisation(enc: Encoder, image_tokens: int, text_len: int, hw: hardware.Hardware, *,
                grad_checkpointing: bool = False, patch_tokens: Optional[int] = None) -> float:
    """Fitted fraction of ``hw``'s peak reached when training ``enc`` at these token counts."""
    f = flops.train_flops_per_sample(enc, image_tokens, text_len, recompute=grad_checkpointing,
                                     patch_tokens=patch_tokens)
    return utilisation_from(fitted_params(), f, hw.peak_flops)


def training_processes(hw: hardware.Hardware) -> int:
    """Processes that train on ``hw``, each with its own ``dataset.workers`` decoding workers: one per GPU
    (torchrun) or for the cpu; one per TPU host (the JAX backend), or one per chip where no source gives the
    chips per host."""
    return (hardware.tpu_hosts(hw.name) or hw.n_devices) if hw.name.startswith("tpu-") else hw.n_devices


def plan_workers(hw: hardware.Hardware) -> int:
    """The ``dataset.workers`` a plan writes: every host core decodes but one per training process (its own
    loop), so the data bound the plan was costed at (all cores) is what the run gets. The recipe's default of
    2 would give an 8-GPU machine of 96 cores 16 decoders."""
    return max(1, hw.cpu_cores // training_processes(hw) - 1)


def decoders(hw: hardware.Hardware, workers: Optional[int]) -> int:
    """Processes decoding images for a run with ``workers`` per training process (0: the trainer itself),
    at most the host cores; every core when ``workers`` is None (the published runs the fit uses)."""
    if workers is None:
        return hw.cpu_cores
    return min(hw.cpu_cores, max(1, workers) * training_processes(hw))


def decode_rate_per_core(image_size: int) -> float:
    """Images/s one core decodes at ``image_size`` px (log-log interpolation of the measured rates)."""
    rates, _ = hardware.decode_rates()
    sizes = sorted(rates)
    if image_size <= sizes[0]:
        return rates[sizes[0]]          # below the smallest size decode cost stops falling (draft is 1/8 at most)
    i = next((k for k in range(1, len(sizes)) if sizes[k] >= image_size), len(sizes) - 1)
    s0, s1 = sizes[i - 1], sizes[i]
    slope = math.log(rates[s1] / rates[s0]) / math.log(s1 / s0)
    return rates[s0] * (image_size / s0) ** slope


def data_samples_per_s(image_size: int, hw: hardware.Hardware, workers: Optional[int] = None) -> float:
    """Images/s ``hw``'s decoders (``decoders``) decode at ``image_size`` px."""
    return decode_rate_per_core(image_size) * decoders(hw, workers)


def stage_time(enc: Encoder, image_tokens: int, text_len: int, samples: float, hw: hardware.Hardware, *,
               image_size: int, grad_checkpointing: bool = False, utilisation: Optional[float] = None,
               patch_tokens: Optional[int] = None, params: Optional[dict] = None) -> StageTime:
    """Throughput and hours of ``samples`` samples on ``hw``; ``utilisation`` overrides the fitted one,
    ``params`` ({'u_max', 't0_s'}) the stored fit it comes from."""
    per_sample = flops.train_flops_per_sample(enc, image_tokens, text_len, recompute=grad_checkpointing,
                                              patch_tokens=patch_tokens)
    return time_of(per_sample, samples, hw, image_size=image_size, utilisation=utilisation, params=params)


def time_of(per_sample: float, samples: float, hw: hardware.Hardware, *, image_size: int,
            utilisation: Optional[float] = None, params: Optional[dict] = None,
            workers: Optional[int] = None) -> StageTime:
    """``stage_time`` of a stage whose samples cost ``per_sample`` training FLOPs each (as executed,
    recomputation included), decoded by ``workers`` per training process (``decoders``)."""
    if utilisation is not None:
        u = utilisation
    else:
        u = utilisation_from(params if params is not None else fitted_params(), per_sample, hw.peak_flops)
    if not 0.0 < u <= 1.0:
        raise ValueError(f"utilisation must be in (0, 1], got {u}")
    compute = hw.n_devices * hw.peak_flops * u / per_sample
    data = data_samples_per_s(image_size, hw, workers)
    rate = min(compute, data)
    wall = samples / rate / 3600.0
    return StageTime(samples_per_s=rate, device_hours=wall * hw.n_devices, wall_hours=wall, utilisation=u,
                     bound="compute" if compute <= data else "data", compute_samples_per_s=compute,
                     data_samples_per_s=data)


# --- the published runs the fit uses -----------------------------------------------------------

@dataclass(frozen=True)
class _Stage:
    image_size: int
    image_tokens: int
    patch_tokens: int
    text_len: int
    samples: float


def clipa_v2_runs() -> list[dict]:
    """CLIPA-v2 rows with A100 GPU-hours, as stages (pre-train + masked fine-tunes)."""
    runs = []
    # accuracy_data's reader also repairs the unquoted commas in the CLIPA-v1 run names.
    for row in accuracy_data.read_rows(accuracy_data.PUB, "run").values():
        if not row["a100_gpu_hours"]:
            continue
        enc = encoders.get(row["image_encoder"])
        size = int(row["pretrain_image_size"])
        stages = [_Stage(size, int(row["pretrain_image_tokens"]), enc.vision.tokens(size),
                         int(row["text_len_pretrain"]), float(row["pretrain_samples"]))]
        for m_samples, res in re.findall(r"(\d+)M @(\d+)", row["finetune_stages"]):
            res = int(res)
            stages.append(_Stage(res, enc.vision.kept_tokens(res, CLIPA_V2_FT_MASK[res]), enc.vision.tokens(res),
                                 CLIPA_V2_FT_TEXT_LEN, float(m_samples) * 1e6))
        # CLIPA-v2 trained with activation rematerialisation (recipes_clipa_reference.md: "remat of activations").
        runs.append({"run": row["run"], "encoder": enc.name, "hardware": "a100x8", "stages": stages,
                     "recompute": True, "published_gpu_hours": float(row["a100_gpu_hours"]),
                     "source": row["source"]})
    return runs


# CLIPA-v1 on one 8x A100 server: pre-training length accuracy_data.V1_PRETRAIN (2.56B samples,
# "6 epochs of LAION-400M"); token counts as run, class token included
# (I50 = 49 patches + 1); fine-tune at 224 px with all 196 + 1 tokens. GPU-hours from rows 46-48
# (third-party transcription of CLIPA Table 1, consistent with the README's ~2/~3/~4 days on 8 A100).
_V1_HOURS_ROW = {"40": "46", "41": "47", "42": "48"}


def clipa_v1_runs() -> list[dict]:
    rows = accuracy_data.read_rows(accuracy_data.RES, "row_id")
    runs = []
    for rid, hid in _V1_HOURS_ROW.items():
        r = rows[rid]
        enc = encoders.get(r["image_encoder"])
        size, ft_size = int(r["pretrain_image_res"]), int(r["ft_stage1_res"])
        ft_samples = float(re.match(r"[\d,]+", r["ft_stage1_samples"]).group(0).replace(",", ""))
        ft_tokens = enc.vision.tokens(ft_size) + 1
        stages = [_Stage(size, int(r["pretrain_image_tokens"]), int(r["pretrain_image_tokens"]),
                         int(r["pretrain_text_len"]), accuracy_data.V1_PRETRAIN),
                  _Stage(ft_size, ft_tokens, ft_tokens, int(r["ft_text_len"]), ft_samples)]
        # CLIPA-v1's torch recipes use gradient checkpointing (recipes_clipa_reference.md).
        runs.append({"run": f"{r['model']} (CLIPA-v1)", "encoder": enc.name, "hardware": "a100x8", "stages": stages,
                     "recompute": True, "published_gpu_hours": float(rows[hid]["gpu_hours"]),
                     "source": rows[hid]["source"]})
    return runs


def fit_runs() -> list[dict]:
    """The runs ``fit()`` uses: CLIPA-v2 estimates and CLIPA-v1 runs, all on 8x A100."""
    return clipa_v2_runs() + clipa_v1_runs()


# OpenCLIP full-token runs on A100-40GB (ext_openclip_training_compute.csv rows 54, 32, 55, 56:
# scaling-laws-openclip samples seen and derived GPU-hours). Not used by the fit: a different
# software stack on hundreds of GPUs; reported as held-out. Gradient checkpointing per the LAION
# blog (rows 19-22) for H/14 and g/14 and PRETRAINED.md (row 4) for L/14.
_OPENCLIP_HELD_OUT = {"54": ("B/16", False), "32": ("L/14", True), "55": ("H/14", True), "56": ("g/14", True)}


def openclip_runs() -> list[dict]:
    runs = []
    with open(DATA / "ext_openclip_training_compute.csv") as f:
        for row in csv.DictReader(f):
            if row["row_id"] not in _OPENCLIP_HELD_OUT:
                continue
            name, recompute = _OPENCLIP_HELD_OUT[row["row_id"]]
            enc = encoders.get(name)
            full = enc.vision.tokens(224)
            stage = _Stage(224, full, full, 77, float(row["samples_seen"]))
            runs.append({"run": f"OpenCLIP {row['model']} {row['dataset']} {float(row['samples_seen']):.3g} samples",
                         "encoder": name, "hardware": "a100-40gbx8", "stages": [stage], "recompute": recompute,
                         "published_gpu_hours": float(row["gpu_hours"]), "source": row["source"]})
    return runs


def predict_run_hours(run: dict, params: dict) -> float:
    enc = encoders.get(run["encoder"])
    hw = hardware.get(run["hardware"])
    total = 0.0
    for st in run["stages"]:
        total += stage_time(enc, st.image_tokens, st.text_len, st.samples, hw, image_size=st.image_size,
                            grad_checkpointing=run["recompute"], patch_tokens=st.patch_tokens,
                            params=params).device_hours
    return total


def _chip(device: str) -> str:
    """The chip a device entry is (``A100-80GB`` -> ``A100``): memory size does not change its speed."""
    return re.sub(r"-\d+GB$", "", device)


def fitted_chips() -> set[str]:
    """Chips the published runs behind the utilisation fit (``fit_runs()``) trained on."""
    return {_chip(hardware.get(name).device) for name in {r["hardware"] for r in fit_runs()}}


def uncalibrated_note(hw: hardware.Hardware, calibration=None) -> Optional[str]:
    """A line for the plan when ``hw``'s utilisation comes from another chip's fit, or from one machine's
    for several (a100x32), else None.

    No published training run exists on other chips, so their throughput is the A100 fit's fraction of
    their own peak until the user's runs calibrate it (``clipa-report --calibrate``)."""
    if calibration is not None and calibration.utilisation(hw.name) is not None:
        return None
    chips, machines = fitted_chips(), hardware.machine_count(hw.name)
    why = [f"utilisation carried over from the {'/'.join(sorted(chips))} fit"] if _chip(hw.device) not in chips else []
    if machines > 1:  # the fit models no communication between machines
        why.append(f"its {machines} machines assumed to add up (no communication between them modelled)")
    return (f"throughput uncalibrated on {hw.name}: {' and '.join(why)} (calibrate with your own runs: clipa-report "
            "--calibrate RUN_DIR)") if why else None


def fit() -> dict:
    """Least-squares fit (log GPU-hours) of u_max and t0_s to ``fit_runs()``."""
    import numpy as np
    from scipy.optimize import least_squares

    runs = fit_runs()

    def residuals(x):
        p = {"u_max": x[0], "t0_s": x[1] * 1e-6}
        return np.array([math.log(predict_run_hours(r, p) / r["published_gpu_hours"]) for r in runs])

    # t0 in microseconds inside the solver so both unknowns are of order 1.
    res = least_squares(residuals, x0=[0.3, 10.0], bounds=([1e-3, 0.0], [1.0, 1e6]), xtol=1e-12, ftol=1e-12)
    return {"u_max": float(res.x[0]), "t0_s": float(res.x[1]) * 1e-6}


def fit_report(params: Optional[dict] = None) -> dict:
    """Fitted parameters and, per run, predicted vs published GPU-hours.

    ``runs``: one dict per run (``fitted`` True for the runs the fit used, False for held-out ones);
    ``max_abs_rel_error`` is over the fitted runs.
    """
    params = params or fitted_params()

    def rows(runs, fitted):
        out = []
        for r in runs:
            pred = predict_run_hours(r, params)
            out.append({"run": r["run"], "hardware": r["hardware"], "fitted": fitted,
                        "published_gpu_hours": r["published_gpu_hours"], "predicted_gpu_hours": round(pred, 1),
                        "rel_error": round(pred / r["published_gpu_hours"] - 1.0, 4)})
        return out

    fitted = rows(fit_runs(), True)
    return {
        "model": "time/sample/device = F / (peak * u_max) + t0_s, i.e. u = u_max * F / (F + t0_s * peak * u_max), "
                 "F = training FLOPs per sample; achieved FLOP/s = peak * u",
        "params": dict(params),
        "max_abs_rel_error": max(abs(r["rel_error"]) for r in fitted),
        "runs": fitted + rows(openclip_runs(), False),
        "held_out_note": "OpenCLIP A100-40GB runs (scaling-laws-openclip) are not fitted: that stack, on hundreds "
                         "of GPUs, reached a lower fraction of peak than the CLIPA runs on one 8x A100 machine",
    }


def write_fit(path: Path = FIT_FILE) -> dict:
    params = fit()
    text = ("# Fitted by `python -m clipa.costmodels.throughput --refit` (scipy least_squares on log GPU-hours)\n"
            "# to the CLIPA-v2 and CLIPA-v1 A100 GPU-hours (throughput.fit_runs); tests/test_costmodels_throughput.py\n"
            "# checks that a refit reproduces these values.\n"
            + yaml.safe_dump({"params": params}, sort_keys=True))
    fs.write_atomic(path, text)
    fitted_params.cache_clear()
    return params


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Throughput model: refit utilisation / print the fit report")
    ap.add_argument("--refit", action="store_true", help=f"refit and rewrite {FIT_FILE.name}")
    args = ap.parse_args()
    if args.refit:
        print("fitted:", write_fit())
    print(json.dumps(fit_report(), indent=2))
