"""One training step: contrastive loss over the global batch, optax AdamW, warmup + cosine.

Each builder gets only its own section of the recipe (a ``Stage``'s optimizer/schedule), never
the whole recipe. Learning rates are per optimizer step; durations arrive in samples and are
turned into steps by the recipe (``Stage.steps`` and ``Stage.warmup_steps``), for both backends.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from clipa.recipe import OptimizerSpec, ScheduleSpec, Stage
from clipa.backends.jax import sharding as shd
from clipa.backends.jax.model import CLIP


def lr_at(step, peak: float, sched: ScheduleSpec, total_steps: int, warm: int):
    """Learning rate of optimizer step ``step`` (0-based; jnp or python number).

    Linear warmup to ``peak`` over ``warm`` steps (step 0 already gets peak/warm, never 0), then
    cosine from ``peak`` to ``sched.min_lr`` over the remaining steps (or constant).
    """
    step = jnp.asarray(step, jnp.float32)
    warm_lr = peak * (step + 1.0) / max(warm, 1)
    if sched.name == "constant":
        after = jnp.asarray(peak, jnp.float32)
    else:
        frac = jnp.clip((step - warm) / max(total_steps - warm, 1), 0.0, 1.0)
        after = sched.min_lr + 0.5 * (peak - sched.min_lr) * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < warm, warm_lr, after)


def schedule(stage: Stage) -> Callable:
    warm, total = stage.warmup_steps, stage.steps
    return lambda step: lr_at(step, stage.optimizer.lr, stage.schedule, total, warm)


def decay_mask(params):
    """Weight decay on matrices (kernels, embeddings) only; biases, norms and the temperature
    are not decayed (open_clip's rule: exclude parameters with ndim < 2)."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def optimizer(opt: OptimizerSpec, lr: Callable) -> optax.GradientTransformation:
    """AdamW as torch.optim.AdamW (decoupled decay scaled by lr), optional global-norm clip."""
    adamw = optax.adamw(lr, b1=opt.betas[0], b2=opt.betas[1], eps=opt.eps,
                        weight_decay=opt.weight_decay, mask=decay_mask)
    if opt.grad_clip:
        return optax.chain(optax.clip_by_global_norm(opt.grad_clip), adamw)
    return adamw


def contrastive_loss(img: jax.Array, txt: jax.Array, scale: jax.Array) -> jax.Array:
    """Symmetric InfoNCE over the whole batch given (the global batch under jit: XLA gathers)."""
    logits = scale * img @ txt.T
    labels = jnp.arange(img.shape[0])
    li = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    lt = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return 0.5 * (li + lt)


def loss_fn(model: CLIP, params, batch: dict) -> jax.Array:
    img, txt, scale = model.apply({"params": params}, batch["image"], batch["text"], batch.get("keep"))
    return contrastive_loss(img, txt, scale)


def init_state(params, tx: optax.GradientTransformation) -> dict:
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def state_sharding(state, mesh: Mesh):
    """Parameters and the optimizer moments follow ``param_sharding``; scalars are replicated."""
    ps = shd.param_sharding(mesh, state["params"])
    rep = shd.replicated(mesh)

    def like_params(tree):
        # optax moments mirror the params tree; everything else (counts) is replicated.
        flat_p = {p: s for p, s in jax.tree_util.tree_leaves_with_path(ps)}
        return jax.tree_util.tree_map_with_path(lambda path, x: _match(path, flat_p, rep), tree)

    return {"params": ps, "opt_state": like_params(state["opt_state"]), "step": rep}


def _match(path, flat_p, rep):
    # A moment's path ends with the parameter's path (e.g. (0, mu, visual, head, kernel)).
    for ppath, s in flat_p.items():
        if len(path) >= len(ppath) and tuple(path[-len(ppath):]) == tuple(ppath):
            return s
    return rep


def make_step(model: CLIP, tx: optax.GradientTransformation, mesh: Mesh, state, batch_keys):
    """-> jitted ``step(state, batch) -> (state, metrics)`` with the batch split over ``mesh``."""
    st_sh = state_sharding(state, mesh)
    b_sh = {k: shd.batch_sharding(mesh) for k in batch_keys}
    rep = shd.replicated(mesh)

    def step(state, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch))(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new, {"loss": loss}

    return jax.jit(step, in_shardings=(st_sh, b_sh), out_shardings=(st_sh, rep), donate_argnums=(0,))


def place_state(state, mesh: Mesh):
    """Lay ``state`` out on ``mesh``. The step donates its input: pass host (numpy) arrays or device
    arrays no longer needed elsewhere (device_put may alias them)."""
    return jax.device_put(state, state_sharding(state, mesh))
