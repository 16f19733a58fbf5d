"""Zero-shot top-1 of the Flax model (the protocol is backends/data/zeroshot.py's).

Every host scores the whole set on its first local device with a local copy of the weights:
evaluation sets are small next to training, and this needs no cross-host batch assembly
(the figure is identical on every host; process 0 writes it).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from clipa.backends.data import zeroshot
from clipa.backends.jax import sharding as shd
from clipa.backends.jax.model import CLIP
from clipa.recipe import Stage

EVAL_BATCH = 256  # images/prompts per forward; memory only, the figure does not depend on it


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode(model: CLIP, method: str, params, x):
    return model.apply({"params": params}, x, method=getattr(CLIP, method))


def zero_shot_top1(model: CLIP, params, zs, tokenizer, st: Stage, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy in percent of ``zs`` (a backends.data ZeroShotSet) at the stage's resolution."""
    local = jax.device_put(shd.to_host(params), jax.local_devices()[0])

    def encoder(method: str, dtype):
        return lambda x: np.asarray(_encode(model, method, local, jnp.asarray(x, dtype)), np.float32)

    return zeroshot.top1_percent(zs, tokenizer, st.text_len, st.image_size, batch_size,
                                 encoder("encode_text", jnp.int32), encoder("encode_image", jnp.float32))
