"""The small JAX training problem the multi-device and multi-host tests run in their child processes:
the test encoder, one fixed global batch, two AdamW steps. Imported after XLA flags are set."""
from __future__ import annotations

import numpy as np

B, SIZE, L = 8, 32, 16


def problem(mask: bool = False):
    """-> (model, optax tx, host params, global batch); ``mask`` adds a 50 % random-mask ``keep``."""
    import jax

    from clipa import encoders
    from clipa.backends.jax import model as M, trainer as T
    from clipa.recipe import OptimizerSpec, Stage

    enc = encoders.get("test")
    reduction = {"kind": "random_mask", "mask_ratio": 0.5} if mask else {"kind": "resize"}
    st = Stage(name="s", samples=10 * B, global_batch=B, image_size=SIZE, text_len=L,
               optimizer=OptimizerSpec(lr=1e-3), image_reduction=reduction)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(B, 3, SIZE, SIZE)).astype(np.float32),
             "text": rng.integers(1, 49407, (B, L)).astype(np.int32)}
    if mask:
        k = st.image_tokens(enc)
        batch["keep"] = np.stack([np.sort(rng.permutation(enc.vision.tokens(SIZE))[:k])
                                  for _ in range(B)]).astype(np.int32)
    model = M.build(enc)
    params = jax.device_get(M.init_params(model, jax.random.key(0), SIZE, L))  # host copy: steps donate their input
    return model, T.optimizer(st.optimizer, T.schedule(st)), params, batch


def two_steps(model, tx, params, batch, mesh, step=None):
    """Two training steps on ``mesh`` (``batch`` = this process's rows) -> (final state, losses).
    ``step``: a compiled step for this batch's keys to reuse (default: compile one)."""
    from clipa.backends.jax import sharding as shd, trainer as T

    state = T.place_state(T.init_state(params, tx), mesh)
    step = step or T.make_step(model, tx, mesh, state, list(batch))
    losses = []
    for _ in range(2):
        state, out = step(state, shd.global_batch(batch, mesh))
        losses.append(float(out["loss"]))
    return state, losses


def flat_params(state) -> np.ndarray:
    import jax

    from clipa.backends.jax import sharding as shd

    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(shd.to_host(state["params"]))])
