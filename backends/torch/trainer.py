"""The training loop: every stage of a recipe in sequence, resumable from the run directory.

One process per device (torchrun) runs ``run``. Stage k starts from stage k-1's weights with the
position embedding adapted (``CLIPA.set_stage``) and a fresh AdamW + schedule. Rank 0 writes the
metrics, checkpoints and achieved.json; every rank reads the latest checkpoint on start.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from rich.console import Console

from clipa import rundir
from clipa.backends import runstate as rs
from clipa.backends.torch import checkpoint, dist as tdist, evaluate, optim
from clipa.backends.torch.model import CLIPA
from clipa.errors import UserError
from clipa.recipe import DatasetSpec, Recipe


def _amp(world: tdist.World, recipe: Recipe):
    if world.device.type == "cuda" and recipe.train.precision == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext  # fp32 on CPU (bf16 matmuls there are slow and not what a GPU does)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def _stats_total(stats, world: tdist.World) -> tuple[int, dict]:
    """Skipped samples and reasons summed over ranks (since this process started)."""
    local = {"skipped": stats.skipped, "reasons": dict(stats.reasons)}
    if not dist.is_initialized():
        return local["skipped"], local["reasons"]
    every = [None] * world.world_size
    dist.all_gather_object(every, local)
    reasons: dict = {}
    for e in every:
        reasons = rs.merge_counts(reasons, e["reasons"])
    return sum(e["skipped"] for e in every), reasons


def _main_weights(ddp, world: tdist.World, fsdp: bool) -> Optional[dict]:
    """The full weights (plain tensors) on rank 0, None elsewhere. Under FSDP the gather is a
    collective: every rank takes part and gets them (the stage-end rebuild needs them everywhere)."""
    return tdist.full_weights(ddp, fsdp) if fsdp or world.is_main else None


def _build_model(enc, image_size: int, st, weights: Optional[dict], world: tdist.World,
                 grad_checkpointing: bool) -> CLIPA:
    """A plain model on the device: built at ``image_size`` px (random init from torch's RNG), then,
    given ``weights``, set to stage ``st`` and loaded with them."""
    model = CLIPA(enc, image_size)
    if weights is not None:
        model.set_stage(st.image_size, st.pos_embed)
        model.load_state_dict(weights)
    model.to(world.device)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def run(recipe: Recipe, run_dir: Path, dataset: DatasetSpec, world: tdist.World, *,
        max_samples: Optional[int] = None, console: Optional[Console] = None) -> Optional[rundir.Achieved]:
    """Train every stage not yet done; returns the achieved figures (rank 0, finished run) or None."""
    from clipa.backends.data import pipeline, tokenizer, zeroshot

    console = console or Console(stderr=True, soft_wrap=True)
    run_dir = Path(run_dir)
    enc = recipe.encoder.spec
    tr = recipe.train
    t_start = time.monotonic()
    amp = _amp(world, recipe)
    mfu = rs.mfu_fn(recipe, world.world_size)
    stages = recipe.stages
    for i, st in enumerate(stages):
        if st.global_batch % world.world_size:
            raise UserError(f"stages[{i}].global_batch: {st.global_batch} is not divisible by {world.world_size} processes")

    torch.manual_seed(tr.seed)
    prog, weights, state = rs.RunProgress(), None, {}
    last = checkpoint.latest(run_dir)
    if last is not None:
        weights, state = checkpoint.load(last)
        prog = rs.RunProgress.from_state(state)
    model = _build_model(enc, stages[0].image_size, stages[prog.stage], weights, world, tr.grad_checkpointing)
    opt_state = state.get("optimizer")
    if last is not None:
        torch.set_rng_state(state["rng"])  # after the build: a fresh run's init draws from the seed
        if world.is_main:
            console.print(f"resuming {run_dir} from {last.name} (stage {stages[prog.stage].name}, step {prog.step})")
            rs.truncate_metrics(run_dir / rundir.METRICS, prog.metrics_bytes)
    fsdp = _needs_fsdp(recipe, world)

    zs = zeroshot.load_zeroshot(dataset.val, dataset.classnames, dataset.templates) if dataset.val else None
    tok = tokenizer.get()
    stats = pipeline.DataStats()
    metrics_path = run_dir / rundir.METRICS

    def elapsed() -> float:
        return prog.time_s + time.monotonic() - t_start

    def write_metrics(line: dict) -> None:
        if world.is_main:
            rs.append_metrics(metrics_path, line)

    while prog.stage < len(stages):
        k = prog.stage
        st = stages[k]
        if prog.step >= st.steps:  # resumed from the checkpoint that closed this stage
            prog.stage, prog.step, prog.stage_time_s, opt_state = k + 1, 0, 0.0, None
            if prog.stage < len(stages):
                nxt = stages[prog.stage]
                model.set_stage(nxt.image_size, nxt.pos_embed)
                model.to(world.device)
            continue
        stage_t0 = time.monotonic()
        per_rank = st.global_batch // world.world_size
        ddp = tdist.wrap(model, world, fsdp=fsdp)
        opt = optim.build(ddp, st)
        if opt_state is not None:
            tdist.load_optim_state(ddp, opt, opt_state, fsdp)
            opt_state = None
        step_fn = torch.compile(ddp) if tr.compile else ddp
        batches = pipeline.train_batches(dataset, st, enc, batch_size=per_rank, rank=world.rank,
                                         world_size=world.world_size, seed=tr.seed,
                                         start_sample=prog.samples_drawn, stats=stats)
        bad = torch.zeros((), dtype=torch.bool, device=world.device)
        loss_sum = torch.zeros((), device=world.device)
        win_t, win_steps = time.monotonic(), 0
        ckpt_every = rs.every(tr.checkpoint_every_samples, st.global_batch)
        eval_every = rs.every(tr.eval_every_samples, st.global_batch)

        def save_ckpt(weights: Optional[dict] = None) -> None:
            """``weights``: ``_main_weights`` already gathered at this step (None: gather them here)."""
            if bool(bad):
                raise _diverged(st.name, prog.step, run_dir)
            skipped, reasons = _stats_total(stats, world)
            if weights is None:
                weights = _main_weights(ddp, world, fsdp)
            osd = tdist.optim_state(ddp, opt, fsdp) if fsdp or world.is_main else None  # collective under FSDP
            if world.is_main:
                state = {**rs.checkpoint_meta(prog, skipped=skipped, reasons=reasons, time_s=elapsed(),
                                              stage_s=time.monotonic() - stage_t0, metrics_path=metrics_path),
                         "optimizer": osd, "rng": torch.get_rng_state()}
                checkpoint.save(run_dir, k, prog.step, weights, state, _meta(recipe, st, model))
            if dist.is_initialized():
                dist.barrier()

        with rs.progress_bar(world.is_main, console) as bar:
            task = bar.add_task(f"{st.name}", total=st.steps, completed=prog.step, info="")
            while prog.step < st.steps:
                if max_samples is not None and prog.samples_drawn >= max_samples:
                    save_ckpt()
                    console.print(f"stopped at --max-samples {max_samples}; run again to continue")
                    return None
                lr = optim.lr_at(st, prog.step)
                for g in opt.param_groups:
                    g["lr"] = lr
                b = _to_device(next(batches), world.device)
                with amp():
                    img, txt, scale = step_fn(b["image"], b["text"].long(), b.get("keep"))
                    loss = tdist.contrastive_loss(img, txt, scale)
                loss.backward()
                if st.optimizer.grad_clip:
                    torch.nn.utils.clip_grad_norm_(ddp.parameters(), st.optimizer.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                bad |= ~torch.isfinite(loss.detach())  # no host sync per step; checked at log/ckpt time
                loss_sum += loss.detach()
                prog.step += 1
                prog.samples_drawn += st.global_batch
                win_steps += 1
                if prog.step % tr.log_every_steps == 0 or prog.step == st.steps:
                    if bool(bad):
                        raise _diverged(st.name, prog.step, run_dir)
                    avg = tdist.mean_over_ranks(loss_sum / win_steps).item()
                    sps = win_steps * st.global_batch / (time.monotonic() - win_t)
                    write_metrics(dict(stage=st.name, step=prog.step, samples=prog.step * st.global_batch,
                                       time_s=elapsed(), loss=avg, lr=lr, samples_per_s=sps, mfu=mfu(st, sps)))
                    bar.update(task, info=f"loss {avg:.3f}  {sps:,.0f} samples/s")
                    loss_sum.zero_()
                    win_t, win_steps = time.monotonic(), 0
                if eval_every and prog.step % eval_every == 0 and prog.step < st.steps and zs is not None:
                    top1 = _eval(model, zs, tok, st, per_rank, world, amp, fsdp)
                    write_metrics(dict(kind="eval", stage=st.name, step=prog.step,
                                       samples=prog.step * st.global_batch, time_s=elapsed(), top1=top1))
                if ckpt_every and prog.step % ckpt_every == 0 and prog.step < st.steps:
                    save_ckpt()
                bar.update(task, completed=prog.step)

        if bool(bad):
            raise _diverged(st.name, prog.step, run_dir)
        top1 = _eval(model, zs, tok, st, per_rank, world, amp, fsdp) if zs is not None else None
        stage_wall = prog.stage_time_s + time.monotonic() - stage_t0
        samples = st.steps * st.global_batch
        prog.history.append(rs.stage_record(st, top1, stage_wall, world.world_size, mfu))
        write_metrics(dict(kind="eval", stage=st.name, step=prog.step, samples=samples, time_s=elapsed(), top1=top1))
        weights = _main_weights(ddp, world, fsdp)  # once: the stage file, the checkpoint, the FSDP rebuild
        if world.is_main:
            console.print(f"stage {st.name}: {samples:,} samples in {stage_wall:.0f} s"
                          + (f", zero-shot top-1 {top1:.2f}%" if top1 is not None else ""))
            checkpoint.save_weights_atomic(weights, checkpoint.ckpt_dir(run_dir) / f"stage-{k}-{rundir.safe_name(st.name)}.safetensors",
                                           _meta(recipe, st, model))
        save_ckpt(weights)  # step == steps: marks the stage done (resuming goes on with the next stage)
        prog.stage_time_s = 0.0
        if fsdp:  # FSDP shards the module in place: continue from a plain copy of the full weights
            model = _build_model(enc, st.image_size, st, weights, world, tr.grad_checkpointing)

    skipped, reasons = _stats_total(stats, world)
    skipped, reasons = prog.skipped + skipped, rs.merge_counts(prog.reasons, reasons)
    if not world.is_main:
        return None
    rs.print_skipped(console, skipped, reasons)
    last_st = stages[-1]
    checkpoint.save_weights_atomic(tdist.full_weights(model, False), checkpoint.ckpt_dir(run_dir) / "final.safetensors",
                                   _meta(recipe, last_st, model))
    dev_name = torch.cuda.get_device_name(world.device) if world.device.type == "cuda" else "cpu"
    return rs.achieved(recipe, backend="torch", device=dev_name, n_devices=world.world_size, prog=prog,
                       wall=elapsed(), skipped=skipped, reasons=reasons, dataset=dataset)


def _eval(model, zs, tok, st, batch_size, world, amp, fsdp) -> float:
    return evaluate.zero_shot_top1(model, zs, tok, image_size=st.image_size, text_len=st.text_len,
                                   batch_size=batch_size, device=world.device, amp=amp, shard=not fsdp)


def _needs_fsdp(recipe: Recipe, world: tdist.World) -> bool:
    """FSDP only where a replicated model + optimizer state would not fit one device (cost model's verdict)."""
    if world.world_size == 1 or world.device.type != "cuda":
        return False
    try:
        import dataclasses

        from clipa.costmodels import hardware, memory

        # The recipe's hardware, with the memory of the device this process actually has.
        hw = dataclasses.replace(hardware.get(recipe.hardware.name),
                                 memory_bytes=float(torch.cuda.get_device_properties(world.device).total_memory))
        enc = recipe.encoder.spec
        return not all(memory.fits(enc, st.global_batch // world.world_size, st.image_tokens(enc), st.text_len, hw,
                                   grad_checkpointing=recipe.train.grad_checkpointing, precision=recipe.train.precision)
                       for st in recipe.stages)
    except (ImportError, AttributeError, TypeError, UserError):  # no memory model / unknown hardware: DDP
        return False


def _diverged(stage: str, step: int, run_dir: Path) -> rs.Diverged:
    last = checkpoint.latest(run_dir)
    return rs.diverged(stage, step, f"the last good checkpoint is {last}" if last else
                       "no checkpoint was written before it")


def _meta(recipe: Recipe, st, model: CLIPA) -> dict[str, str]:
    return {"encoder": recipe.encoder.name, "stage": st.name, "image_size": str(st.image_size),
            "pos_embed": model.pos_embed_mode, "format": "clipa-torch-1"}
