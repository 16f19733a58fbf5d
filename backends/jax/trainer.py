"""The JAX trainer: the Flax model, optax AdamW and the jitted step over the global batch, orbax checkpoints.

``JaxTrainer`` is what the shared stage loop (``backends/loop.py``) drives. Every host runs it with
its own share of the global batch (rank = process index); orbax checkpoints are written by all hosts
together. Each builder gets only its own section of the recipe (a ``Stage``'s optimizer/schedule).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from clipa import reductions
from clipa.backends import schedule as sched
from clipa.backends.data import tokenizer
from clipa.backends.jax import checkpoint, convert, evaluate, model as M, sharding as shd
from clipa.backends.jax.model import CLIP
from clipa.recipe import OptimizerSpec, Recipe, Stage


def compute_dtype(precision: str):
    """bf16 compute where the hardware has it (TPU, GPU); float32 on CPU, as the torch backend."""
    return jnp.bfloat16 if precision == "bf16" and jax.default_backend() != "cpu" else jnp.float32


def stage_model(recipe: Recipe, st: Stage) -> CLIP:
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


def schedule(stage: Stage) -> Callable:
    """optax's learning rate of step n: backends/schedule.py's formula, traced with jax.numpy."""
    return lambda step: sched.lr_at(stage, step, jnp)


def decay_mask(params):
    """Weight decay where backends/schedule.py's rule says (matrices and embeddings only)."""
    return jax.tree_util.tree_map_with_path(lambda path, p: sched.decays(jax.tree_util.keystr(path), p.ndim), params)


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


class JaxTrainer:
    """The shared loop's ``Trainer`` on a ``jax.sharding`` mesh (this host's devices, or all hosts')."""

    backend = "jax"

    def __init__(self, recipe: Recipe, run_dir: Path, mesh: Optional[Mesh] = None):
        self.recipe, self.stages, self.mesh = recipe, recipe.stages, mesh or shd.make_mesh()
        for i, st in enumerate(self.stages):
            shd.check_divisible(st.global_batch, self.mesh, f"stages[{i}].global_batch")
        self.n_devices = self.mesh.devices.size
        self.rank, self.world = jax.process_index(), jax.process_count()
        self.is_main = self.rank == 0
        dev = jax.devices()[0]
        self.device_name = "cpu" if dev.platform == "cpu" else dev.device_kind
        self.mngr = checkpoint.manager(run_dir)
        self.state = self.params = self.model = self._step = None
        self.stage, self._keys = self.stages[0], []
        self._saved: Optional[int] = None  # the checkpoint that holds the current state

    def checkpoints(self) -> list[str]:
        return [f"checkpoint {n}" for n in checkpoint.steps(self.mngr)]

    def restore(self, name: Optional[str]) -> Optional[dict]:
        if name is None:
            st = self.stages[0]
            self.params = M.init_params(stage_model(self.recipe, st), jax.random.key(self.recipe.train.seed),
                                        st.image_size, st.text_len)
            return None
        n = int(name.split()[-1])
        st = self.stages[checkpoint.restore(self.mngr, n)[1]["stage"]]  # the state's shapes depend on the stage
        m, tx = stage_model(self.recipe, st), optimizer(st.optimizer, schedule(st))
        like = jax.eval_shape(lambda: init_state(M.init_params(m, jax.random.key(0), st.image_size, st.text_len), tx))
        self.state, meta = checkpoint.restore(self.mngr, n, like, state_sharding(like, self.mesh))
        self.stage, self.params, self._saved = st, self.state["params"], n
        return meta

    def close_stage(self) -> None:
        self.params, self.state = self._params(), None

    def _params(self):
        return self.state["params"] if self.state is not None else self.params

    def start_stage(self, k: int, st: Stage, step: int) -> None:
        self.model, tx = stage_model(self.recipe, st), optimizer(st.optimizer, schedule(st))
        if self.state is None:  # a fresh stage: the previous weights, a new optimizer
            prev = self.stages[max(k - 1, 0)].image_size
            params = adapt_params(self.params, st, self.recipe.encoder.spec.vision.patch, prev)
            self.state = place_state(init_state(params, tx), self.mesh)
        self._keys = ["image", "text"] + (["keep"] if reductions.IMAGE.get(st.image_reduction.kind).masks else [])
        self._step = make_step(self.model, tx, self.mesh, self.state, self._keys)
        self.stage = st

    def step(self, batch: dict) -> jax.Array:
        self.state, out = self._step(self.state, shd.global_batch({k: batch[k] for k in self._keys}, self.mesh))
        return out["loss"]  # a device scalar: no host sync per step

    def mean_loss(self, losses: list) -> float:
        return float(np.mean([float(x) for x in losses]))  # the global batch's loss: the same on every host

    def logit_scale(self) -> float:
        return math.exp(min(float(self._params()["logit_scale"]), M.MAX_LOGIT_SCALE))  # replicated: every host

    def evaluate(self, zs, st: Stage) -> float:
        return evaluate.zero_shot_top1(self.model, self._params(), zs, tokenizer.get(), st)

    def save(self, k: int, step: int, meta: dict) -> str:
        n = sum(s.steps for s in self.stages[:k]) + step  # optimizer steps over the whole run
        if n != self._saved:  # else nothing trained since (e.g. --max-samples right after a periodic save)
            checkpoint.save(self.mngr, n, self.state, meta)
            self._saved = n
        return f"checkpoint {n}"

    def full_weights(self) -> Optional[dict[str, np.ndarray]]:
        host = shd.to_host(self._params())  # every host takes part (an fsdp gather is a collective)
        if not self.is_main:
            return None
        return convert.flax_to_torch_full(host, self.stage.image_size, self.recipe.encoder.spec.vision.patch)

    def all_gather(self, obj) -> list:
        return shd.all_gather_json(obj)
