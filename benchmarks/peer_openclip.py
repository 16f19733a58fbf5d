"""clipa's trainer against OpenCLIP's own (``open_clip_train.main``), end to end, on the same data (issue 13).

    python -m benchmarks.peer_openclip [--quick] [--samples N] [--seeds 0 1 2] [--scale F] [--work DIR]

1. Speed: the demo data (backends/data/demo_data.py, generated once, seed 0) is trained by ``clipa-run``
   on a one-stage recipe (64 px, full captions, batch 32, AdamW lr 1e-3 betas (0.9, 0.95) eps 1e-6 wd 0.1,
   warm-up 640 samples then cosine to 0, fp32) and by OpenCLIP's trainer with the same encoder (clipa's
   ``demo`` shape written as an OpenCLIP model config by ``clipa.export.config``; clipa's tower carries a
   class token, as OpenCLIP's always does), optimiser, schedule, batch, crop range and shards, one after
   the other; OpenCLIP three times: at torch's default threads (one per core, what its users get), at the
   compute-thread count clipa chose (backends/threads.py), and at that count with glibc's malloc set as
   clipa's torch worker sets it for itself (backends/allocator.py), so the last ratio compares the trainers.
   Printed: end-to-end samples/s (samples / wall time of the whole command, start-up included) of each and
   clipa / OpenCLIP, plus the steady rate from each trainer's own log lines.
2. CLIPA at equal wall time: per seed, ``recipes/demo.yaml`` (32-px stage with syntax-reduced captions, then
   a 64-px fine-tune) is run by clipa; OpenCLIP trains at 64 px for as many samples as its measured
   end-to-end rate fits in that same wall time, at the compute-thread count clipa chose (so that the
   comparison is of the recipes, not of thread choices). Both final models are loaded into OpenCLIP's model class
   (clipa's through ``clipa.export``) and scored by ONE evaluator, clipa's zero-shot protocol
   (``backends/data/zeroshot.top1_percent``) on the same held-out split. Mean and spread over the seeds.

OpenCLIP runs through ``benchmarks/openclip_launch.py`` (pandas stand-in, webdataset end-of-shard fix).
Two cores are shared here: run nothing else heavy at the same time; the figures depend on machine load,
printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BATCH = 32
# The demo recipe's optimiser (recipes/demo.yaml) with clipa's defaults for betas and eps (clipa/recipe.py).
LR, WD, BETAS, EPS, WARMUP_SAMPLES = 1e-3, 0.1, (0.9, 0.95), 1e-6, 640
MODEL = "clipa-demo"


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def env(threads=None, allocator=False) -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1")
    if threads is not None:       # OpenCLIP's trainer never sets torch's threads: torch reads this at start
        e["OMP_NUM_THREADS"] = str(threads)
    if allocator:                 # glibc's thresholds as clipa's torch worker sets them (backends/allocator.py)
        from clipa.backends import allocator as alloc

        e.update(alloc.as_environment())
    return e


def data(work: Path, n_train: int, n_val: int) -> dict:
    from clipa.backends.data import demo_data

    out = work / "data"
    done = out / "DONE.json"
    if not done.exists():
        paths = demo_data.generate(out, n_train, n_val, 64, 0)
        done.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return json.loads(done.read_text())


def warmup_samples(samples: int) -> int:
    """The warm-up both trainers get: WARMUP_SAMPLES, or a quarter of a shorter run (--quick), as
    demo_recipe shortens the demo's stages (a recipe's warm-up must fit in its stage)."""
    return min(WARMUP_SAMPLES, samples // 4)


def one_stage(paths: dict, samples: int, seed: int, *, val: bool) -> dict:
    ds = {"name": "demo", "train": paths["train"], "train_samples": int(paths["train_samples"]), "workers": 1}
    if val:
        ds.update(val=paths["val"], classnames=paths["classnames"], templates=paths["templates"])
    return {"name": "peer-64px", "encoder": {"name": "demo", "class_token": True}, "dataset": ds,
            "hardware": {"name": "cpu"},
            "stages": [{"name": "full-64px", "samples": samples, "global_batch": BATCH, "image_size": 64,
                        "text_len": 32, "optimizer": {"lr": LR, "weight_decay": WD, "betas": list(BETAS), "eps": EPS},
                        "schedule": {"warmup_samples": warmup_samples(samples)},
                        "augment": {"random_resized_crop": [0.8, 1.0]}, "pos_embed": "learned"}],
            "train": {"seed": seed, "precision": "fp32", "log_every_steps": 10}}


def demo_recipe(paths: dict, seed: int, scale: float = 1.0) -> dict:
    rec = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    rec["encoder"]["class_token"] = True          # exportable to OpenCLIP's model class, as its ViT has one
    rec["dataset"].update(train=paths["train"], train_samples=int(paths["train_samples"]), val=paths["val"],
                          classnames=paths["classnames"], templates=paths["templates"])
    for st in rec["stages"]:
        st["samples"] = max(BATCH * 4, int(st["samples"] * scale) // BATCH * BATCH)
        st["schedule"]["warmup_samples"] = min(st["schedule"]["warmup_samples"], st["samples"] // 4)
    rec["train"].update(seed=seed, checkpoint_every_samples=None)
    return rec


def run_clipa(rec: dict, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    t0 = time.perf_counter()
    p = subprocess.run([str(Path(PY).parent / "clipa-run"), str(path), "--run-dir", str(run_dir), "--device", "cpu"],
                       env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"clipa-run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rates = [r["samples_per_s"] for r in rows if r.get("samples_per_s")]
    threads = re.findall(r"cpu: (\d+) compute thread", p.stdout + p.stderr)
    samples = sum(st["samples"] for st in rec["stages"])
    return {"wall_s": wall, "samples": samples, "e2e": samples / wall,
            "steady": statistics.median(rates[1:] or rates) if rates else float("nan"),
            # One line per stage when the counts differ: the last stage's (64 px, as OpenCLIP trains here).
            "threads": int(threads[-1]) if threads else None}


def openclip_config(work: Path) -> Path:
    from clipa import export, recipe

    rec = recipe.Recipe.model_validate(one_stage({"train": "x", "train_samples": 1}, BATCH, 0, val=False))
    path = work / f"{MODEL}.json"
    path.write_text(json.dumps(export.config(rec)["model_cfg"], indent=2))
    return path


def run_openclip(cfg: Path, paths: dict, samples: int, seed: int, logs: Path, name: str,
                 threads=None, allocator=False) -> dict:
    """OpenCLIP's trainer; ``threads``: torch's compute threads (None: torch's default, one per core);
    ``allocator``: with glibc's thresholds as clipa sets them for itself (else glibc's defaults)."""
    shutil.rmtree(logs / name, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    args = [PY, "-m", "benchmarks.openclip_launch", str(cfg),
            "--train-data", paths["train"], "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(samples), "--epochs", "1", "--batch-size", str(BATCH),
            "--lr", str(LR), "--wd", str(WD), "--beta1", str(BETAS[0]), "--beta2", str(BETAS[1]), "--eps", str(EPS),
            "--warmup", str(warmup_samples(samples) // BATCH), "--lr-scheduler", "cosine", "--model", MODEL,
            "--precision", "fp32", "--workers", "1", "--seed", str(seed), "--device", "cpu",
            "--aug-cfg", "scale=(0.8,1.0)", "--logs", str(logs), "--name", name, "--save-frequency", "1",
            "--zeroshot-frequency", "0", "--log-every-n-steps", "10", "--report-to", ""]
    t0 = time.perf_counter()
    p = subprocess.run(args, env=env(threads, allocator), capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"open_clip_train failed ({p.returncode}):\n{p.stderr[-3000:]}")
    log = (logs / name / "out.log").read_text()
    rates = [float(x) for x in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s,", log)]
    return {"wall_s": wall, "samples": samples, "e2e": samples / wall,
            "steady": statistics.median(rates[1:] or rates) if rates else float("nan"),
            "checkpoint": logs / name / "checkpoints" / "epoch_1.pt",
            "threads": threads if threads is not None else f"{os.cpu_count()} (torch default)"}


def samples_for_wall(wall_s: float, run: dict) -> int:
    """OpenCLIP samples that take ``wall_s`` end to end, from an earlier OpenCLIP ``run``: its start-up
    (wall minus samples at its steady rate) plus samples at that rate. An end-to-end rate alone would
    charge a short run's start-up to every sample (a 256-sample probe sized seed 0 to 86 s for 257 s)."""
    if not run["steady"] > 0:  # a run too short to log a rate: its end-to-end rate, start-up included
        return max(4 * BATCH, int(wall_s * run["e2e"]) // BATCH * BATCH)
    startup = max(0.0, run["wall_s"] - run["samples"] / run["steady"])
    return max(4 * BATCH, int((wall_s - startup) * run["steady"]) // BATCH * BATCH)


def top1(model, paths: dict, image_size: int, text_len: int) -> float:
    """The one evaluator: clipa's zero-shot protocol on an OpenCLIP model."""
    import numpy as np
    import torch

    from clipa.backends.data import tokenizer, zeroshot

    zs = zeroshot.load_zeroshot(paths["val"], paths["classnames"], paths["templates"])
    model.eval()

    def enc(fn, dtype):
        def f(x):
            with torch.no_grad():
                return fn(torch.as_tensor(np.asarray(x)).to(dtype)).numpy()
        return f

    return zeroshot.top1_percent(zs, tokenizer.get(), text_len, image_size, 100,
                                 enc(model.encode_text, torch.long), enc(model.encode_image, torch.float32))


def openclip_model_of_clipa(run_dir: Path):
    import open_clip

    from clipa import export

    out = export.export(run_dir, run_dir / "openclip")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    return model


def openclip_model(cfg: Path, ckpt: Path):
    import open_clip
    import torch

    open_clip.add_model_config(cfg)
    model = open_clip.create_model(MODEL, pretrained=None)
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny data and runs, one seed (~1-2 min)")
    ap.add_argument("--samples", type=int, default=None, help="samples of each speed run (default 8192)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="equal-wall-time seeds (default 0 1 2)")
    ap.add_argument("--scale", type=float, default=None,
                    help="fraction of recipes/demo.yaml's samples per stage for the equal-wall runs (default 1)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temp dir)")
    a = ap.parse_args(argv)
    samples = a.samples or (160 if a.quick else 8192)
    seeds = a.seeds if a.seeds is not None else ([0] if a.quick else [0, 1, 2])
    scale = a.scale or (0.01 if a.quick else 1.0)
    work = a.work or Path(tempfile.mkdtemp(prefix="clipa-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {load_avg()}  ({os.cpu_count()} cores)  work: {work}", flush=True)
    paths = data(work, 512 if a.quick else 4096, 50 if a.quick else 500)
    cfg = openclip_config(work)

    if not a.skip_speed:
        c = run_clipa(one_stage(paths, samples, 0, val=False), work / "runs" / "speed-clipa")
        print(f"load average: {load_avg()}", flush=True)
        o = run_openclip(cfg, paths, samples, 0, work / "oc", "speed")
        print(f"load average: {load_avg()}", flush=True)
        # The same trainer at clipa's thread count: separates the thread choice from the rest of the trainer.
        om = run_openclip(cfg, paths, samples, 0, work / "oc", "speed-matched", threads=c["threads"] or 1)
        print(f"load average: {load_avg()}", flush=True)
        # And with clipa's allocator settings too: what is left is the trainers themselves.
        oa = run_openclip(cfg, paths, samples, 0, work / "oc", "speed-matched-alloc", threads=c["threads"] or 1,
                          allocator=True)
        print(f"\nspeed, 64 px, batch {BATCH}, {samples} samples each, fp32, one at a time")
        print(f"{'trainer':<40} {'wall s':>8} {'e2e samples/s':>14} {'steady samples/s':>17}  compute threads")
        runs = (("clipa", c, None), ("OpenCLIP", o, ""), ("OpenCLIP, clipa's threads", om, " at clipa's threads"),
                ("OpenCLIP, clipa's threads and allocator", oa, " at clipa's threads and allocator"))
        for label, r, _ in runs:
            print(f"{label:<40} {r['wall_s']:>8.1f} {r['e2e']:>14.1f} {r['steady']:>17.1f}  {r['threads']}")
        for _, r, how in runs[1:]:
            print(f"ratio clipa / OpenCLIP{how}: end to end {c['e2e'] / r['e2e']:.2f}x, "
                  f"steady {c['steady'] / r['steady']:.2f}x", flush=True)
        oc_last = om
    else:
        oc_last = None

    if not a.skip_accuracy:
        rows = []
        for seed in seeds:
            rec = demo_recipe(paths, seed, scale)
            c = run_clipa(rec, work / "runs" / f"demo-{seed}")
            threads = c["threads"] or 1
            if oc_last is None:     # a first OpenCLIP run to measure its start-up and rate
                oc_last = run_openclip(cfg, paths, 64 * BATCH, seed, work / "oc", "probe", threads=threads)
            n = samples_for_wall(c["wall_s"], oc_last)
            o = run_openclip(cfg, paths, n, seed, work / "oc", f"wall-{seed}", threads=threads)
            oc_last = o              # the next seed is sized from the latest measurement
            last = rec["stages"][-1]
            t_c = top1(openclip_model_of_clipa(work / "runs" / f"demo-{seed}"), paths, last["image_size"],
                       last["text_len"])
            t_o = top1(openclip_model(cfg, o["checkpoint"]), paths, 64, 32)
            rows.append((seed, c, o, t_c, t_o))
            print(f"seed {seed}: clipa demo {c['samples']} samples in {c['wall_s']:.0f} s -> top-1 {t_c:.1f}%; "
                  f"OpenCLIP 64 px {o['samples']} samples in {o['wall_s']:.0f} s -> top-1 {t_o:.1f}%; "
                  f"{threads} compute thread(s) each  "
                  f"(load {load_avg()})", flush=True)
        tc, to = [r[3] for r in rows], [r[4] for r in rows]

        def ms(x):
            return f"{statistics.mean(x):.1f} +- {statistics.stdev(x):.1f}" if len(x) > 1 else f"{x[0]:.1f}"

        print(f"\nequal wall time, zero-shot top-1 (%), {len(rows)} seed(s), one evaluator (clipa's protocol on "
              f"OpenCLIP's model class), {Path(paths['val']).name} split of {sum(1 for _ in Path(paths['val']).rglob('*.jpg'))} images")
        print(f"clipa CLIPA recipe: {ms(tc)} (min {min(tc):.1f}, max {max(tc):.1f})")
        print(f"OpenCLIP 64 px:     {ms(to)} (min {min(to):.1f}, max {max(to):.1f})")
        print(f"difference clipa - OpenCLIP: {ms([x - y for x, y in zip(tc, to)])} points; "
              f"wall ratio clipa / OpenCLIP {statistics.mean(r[1]['wall_s'] / r[2]['wall_s'] for r in rows):.2f}")
    print(f"load average after: {load_avg()}")
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
