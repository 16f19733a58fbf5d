"""Zero-shot top-1 on an ImageNet-style val folder (CLIP's prompt ensemble), as ``backends/torch/evaluate.py``.

Every host scores the whole set on its first local device with a local copy of the weights:
evaluation sets are small next to training, and this needs no cross-host batch assembly
(the figure is identical on every host; process 0 writes it).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from clipa.backends.jax import sharding as shd
from clipa.backends.jax.model import CLIP
from clipa.recipe import Stage

EVAL_BATCH = 256  # images/prompts per forward; memory only, the figure does not depend on it


@functools.partial(jax.jit, static_argnums=0)
def _text(model: CLIP, params, text):
    return model.apply({"params": params}, text, method=CLIP.encode_text)


@functools.partial(jax.jit, static_argnums=0)
def _image(model: CLIP, params, image):
    return model.apply({"params": params}, image, method=CLIP.encode_image)


def class_embeddings(model: CLIP, params, prompts: np.ndarray, n_classes: int, batch_size: int) -> jax.Array:
    """prompts [C*T, L] (class-major) -> [C, D]: per class the normalised mean of its normalised prompts."""
    feats = [_text(model, params, jnp.asarray(prompts[i:i + batch_size])) for i in range(0, len(prompts), batch_size)]
    f = jnp.concatenate(feats).reshape(n_classes, -1, feats[0].shape[-1]).mean(axis=1)
    return f / jnp.linalg.norm(f, axis=-1, keepdims=True)


def zero_shot_top1(model: CLIP, params, zs, tokenizer, st: Stage, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy in percent of ``zs`` (a backends.data ZeroShotSet) at the stage's resolution."""
    local = jax.device_put(shd.to_host(params), jax.local_devices()[0])
    prompts = np.asarray(zs.prompts(tokenizer, st.text_len), np.int32)
    classes = class_embeddings(model, local, prompts, len(zs.classnames), batch_size)
    correct = total = 0
    for images, labels in zs.image_batches(st.image_size, batch_size):
        img = _image(model, local, jnp.asarray(images, jnp.float32))
        pred = np.asarray(jnp.argmax(img @ classes.T, axis=-1))
        correct += int((pred == np.asarray(labels)).sum())
        total += len(labels)
    return 100.0 * correct / max(1, total)
