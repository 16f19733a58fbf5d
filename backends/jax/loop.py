"""The JAX training loop: every stage of a recipe in sequence, resumable from the run directory.

Mirrors ``backends/torch/train.py`` (same metrics lines, same achieved.json, same stage
semantics; the bookkeeping both share is ``backends/runstate.py``): stage k starts from stage
k-1's weights with the position embedding adapted and a fresh AdamW + schedule. Every host runs
this; each reads its own share of the global batch (rank = process index) and process 0 writes
metrics and achieved.json. Orbax checkpoints are written by all hosts together.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from clipa import rundir
from clipa.backends import runstate as rs
from clipa.backends.jax import checkpoint, convert, evaluate, model as M, sharding as shd, train as T
from clipa.recipe import DatasetSpec, Recipe, Stage


def compute_dtype(precision: str):
    """bf16 compute where the hardware has it (TPU, GPU); float32 on CPU, as the torch backend."""
    return jnp.bfloat16 if precision == "bf16" and jax.default_backend() != "cpu" else jnp.float32


def stage_model(recipe: Recipe, st: Stage) -> M.CLIP:
    return M.build(recipe.encoder.spec, learned_pos=st.pos_embed == "learned",
                   dtype=compute_dtype(recipe.train.precision), remat=recipe.train.grad_checkpointing)


def adapt_params(params: dict, st: Stage, patch: int, prev_image_size: int) -> dict:
    """Params of the previous stage (trained at ``prev_image_size``) -> this stage's (the torch model's
    ``set_stage``)."""
    params = shd.to_host(params)
    vis = dict(params["visual"])
    grid = st.image_size // patch
    if st.pos_embed == "learned":
        # A learned embedding starts from the one the previous stage used, interpolated to the new grid
        # (CLIPA's fine-tune: "learnable position embedding (interpolated from pretrain)"). A sin-cos
        # table computed afresh at the new grid would instead show the model positions it never saw.
        pe = vis.get("pos_embed")
        if pe is None:
            pe = M.sincos_2d(prev_image_size // patch, vis["patch_embed"]["bias"].shape[0])
        vis["pos_embed"] = M.resize_pos_embed(pe, grid)
    else:
        vis.pop("pos_embed", None)
    return {**params, "visual": vis}


def _global_step(stages, k: int, step: int) -> int:
    return sum(s.steps for s in stages[:k]) + step


def run(recipe: Recipe, run_dir: Path, dataset: DatasetSpec, *, mesh=None, max_samples: Optional[int] = None,
        console: Optional[Console] = None) -> Optional[rundir.Achieved]:
    """Train every stage not yet done; returns the achieved figures (process 0, finished run) or None."""
    from clipa.backends.data import pipeline, tokenizer, zeroshot

    console = console or Console(stderr=True, soft_wrap=True)
    run_dir = Path(run_dir)
    enc, tr, stages = recipe.encoder.spec, recipe.train, recipe.stages
    mesh = mesh or shd.make_mesh()
    main = jax.process_index() == 0
    for i, st in enumerate(stages):
        shd.check_divisible(st.global_batch, mesh, f"stages[{i}].global_batch")
    t_start = time.monotonic()
    mfu = rs.mfu_fn(recipe, mesh.devices.size)
    mngr = checkpoint.manager(run_dir)
    metrics_path = run_dir / rundir.METRICS

    pos, state = rs.RunProgress(), None
    found = checkpoint.latest_meta(mngr)
    if found is not None:
        n, meta = found
        pos = rs.RunProgress.from_state(meta)
        st = stages[pos.stage]
        m, tx = stage_model(recipe, st), T.optimizer(st.optimizer, T.schedule(st))
        like = jax.eval_shape(lambda: T.init_state(M.init_params(m, jax.random.key(0), st.image_size, st.text_len), tx))
        state = checkpoint.restore_state(mngr, n, like, T.state_sharding(like, mesh))
        if main:
            console.print(f"resuming {run_dir} from checkpoint {n} (stage {st.name}, step {pos.step})")
            rs.truncate_metrics(metrics_path, pos.metrics_bytes)
    params = state["params"] if state is not None else None
    if params is None:
        st0 = stages[0]
        params = M.init_params(stage_model(recipe, st0), jax.random.key(tr.seed), st0.image_size, st0.text_len)

    zs = zeroshot.load_zeroshot(dataset.val, dataset.classnames, dataset.templates) if dataset.val else None
    tok = tokenizer.get()
    stats = pipeline.DataStats()

    def elapsed() -> float:
        return pos.time_s + time.monotonic() - t_start

    def write_metrics(line: dict) -> None:
        if main:
            rs.append_metrics(metrics_path, line)

    while pos.stage < len(stages):
        k, st = pos.stage, stages[pos.stage]
        if pos.step >= st.steps:  # resumed from the checkpoint that closed this stage
            pos.stage, pos.step, pos.stage_time_s, state = k + 1, 0, 0.0, None
            continue
        stage_t0 = time.monotonic()
        lr_fn = T.schedule(st)
        m, tx = stage_model(recipe, st), T.optimizer(st.optimizer, lr_fn)
        if state is None:  # a fresh stage: previous weights, new optimizer
            params = adapt_params(params, st, enc.vision.patch, stages[max(k - 1, 0)].image_size)
            state = T.place_state(T.init_state(params, tx), mesh)
        keys = ["image", "text"] + (["keep"] if st.image_reduction.kind != "resize" else [])
        step_fn = T.make_step(m, tx, mesh, state, keys)
        per_host = st.global_batch // jax.process_count()
        batches = pipeline.train_batches(dataset, st, enc, batch_size=per_host, rank=jax.process_index(),
                                         world_size=jax.process_count(), seed=tr.seed,
                                         start_sample=pos.samples_drawn, stats=stats)
        losses: list = []
        win_t, win_steps = time.monotonic(), 0
        ckpt_every = rs.every(tr.checkpoint_every_samples, st.global_batch)
        eval_every = rs.every(tr.eval_every_samples, st.global_batch)

        def finite_losses() -> list[float]:
            """The window's losses on the host (one transfer each); stop if any is NaN/inf."""
            vals = [float(x) for x in losses]
            if not all(np.isfinite(vals)):
                raise rs.diverged(st.name, pos.step, "the last good checkpoint stays")
            return vals

        def save_ckpt() -> None:
            finite_losses()
            meta = rs.checkpoint_meta(pos, skipped=stats.skipped, reasons=stats.reasons, time_s=elapsed(),
                                      stage_s=time.monotonic() - stage_t0, metrics_path=metrics_path)
            checkpoint.save(mngr, _global_step(stages, k, pos.step), state, meta)

        with rs.progress_bar(main, console) as bar:
            task = bar.add_task(st.name, total=st.steps, completed=pos.step, info="")
            while pos.step < st.steps:
                if max_samples is not None and pos.samples_drawn >= max_samples:
                    save_ckpt()
                    if main:
                        console.print(f"stopped at --max-samples {max_samples}; run again to continue")
                    return None
                batch = shd.global_batch({k_: v for k_, v in next(batches).items() if k_ in keys}, mesh)
                state, out = step_fn(state, batch)
                losses.append(out["loss"])  # device scalars: no host sync per step
                pos.step += 1
                pos.samples_drawn += st.global_batch
                win_steps += 1
                if pos.step % tr.log_every_steps == 0 or pos.step == st.steps:
                    avg = float(np.mean(finite_losses()))
                    sps = win_steps * st.global_batch / (time.monotonic() - win_t)
                    lr = float(lr_fn(pos.step - 1))  # the last step's (no host sync per step for it)
                    write_metrics(dict(stage=st.name, step=pos.step, samples=pos.step * st.global_batch,
                                       time_s=elapsed(), loss=avg, lr=lr, samples_per_s=sps, mfu=mfu(st, sps)))
                    bar.update(task, info=f"loss {avg:.3f}  {sps:,.0f} samples/s")
                    losses, win_t, win_steps = [], time.monotonic(), 0
                if eval_every and pos.step % eval_every == 0 and pos.step < st.steps and zs is not None:
                    top1 = evaluate.zero_shot_top1(m, state["params"], zs, tok, st)
                    write_metrics(dict(kind="eval", stage=st.name, step=pos.step,
                                       samples=pos.step * st.global_batch, time_s=elapsed(), top1=top1))
                if ckpt_every and pos.step % ckpt_every == 0 and pos.step < st.steps:
                    save_ckpt()
                bar.update(task, completed=pos.step)

        finite_losses()
        top1 = evaluate.zero_shot_top1(m, state["params"], zs, tok, st) if zs is not None else None
        stage_wall = pos.stage_time_s + time.monotonic() - stage_t0
        samples = st.steps * st.global_batch
        pos.history.append(rs.stage_record(st, top1, stage_wall, mesh.devices.size, mfu))
        write_metrics(dict(kind="eval", stage=st.name, step=pos.step, samples=samples, time_s=elapsed(), top1=top1))
        if main:
            console.print(f"stage {st.name}: {samples:,} samples in {stage_wall:.0f} s"
                          + (f", zero-shot top-1 {top1:.2f}%" if top1 is not None else ""))
        save_ckpt()  # step == steps marks the stage done (resuming goes on with the next stage)
        params = state["params"]
        pos.stage_time_s = 0.0

    skipped, reasons = pos.skipped + stats.skipped, rs.merge_counts(pos.reasons, stats.reasons)
    final = shd.to_host(params)  # every host takes part (an fsdp gather is a collective)
    if not main:
        return None
    rs.print_skipped(console, skipped, reasons)
    last = stages[-1]
    convert.save_safetensors(final,
                             run_dir / rundir.CHECKPOINTS / "final.safetensors", last.image_size, enc.vision.patch)
    dev = jax.devices()[0]
    return rs.achieved(recipe, backend="jax", device="cpu" if dev.platform == "cpu" else dev.device_kind,
                       n_devices=mesh.devices.size, prog=pos, wall=elapsed(), skipped=skipped, reasons=reasons,
                       dataset=dataset)
