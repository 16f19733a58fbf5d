"""The CLIPA model in Flax (linen): image tower, text tower, contrastive head.

Architecture is the contract of ``backends/README.md``, shared with the PyTorch backend
(``backends/torch/model.py``); ``convert.py`` maps the parameters of one onto the other and
``tests/test_jax_parity.py`` checks that both give the same embeddings.

Why linen rather than nnx: linen parameters are a plain nested dict (a pytree), so the
converter, orbax checkpoints, optax and ``jax.jit`` shardings all act on one value with no
module state to split or merge; ``nn.remat`` covers activation checkpointing.

Shapes come only from ``clipa.encoders``. Images arrive NCHW (the shared batch format) and are
transposed to NHWC here. Parameters are float32; ``dtype`` is the compute dtype (bf16 on
accelerators, float32 on CPU).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipa import encoders
from clipa.backends.posembed import sincos_2d

# LayerNorm eps of timm's VisionTransformer and of the contract (backends/README.md).
LN_EPS = 1e-6
# CLIP's initial temperature, logit scale = log(1/0.07) (Radford et al. 2021, sec. 2.5),
# and its clamp at 100 (same source; open_clip clamps logit_scale.exp() at 100).
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)  # clamp on the log scale, as the PyTorch backend

# The PyTorch backend's initial distributions, so that a seed of either backend draws from the same ones
# (tests/test_jax_parity.py compares them tensor by tensor):
# - block linears: timm's trunc_normal_(std=.02) cuts at +-2 in absolute value, i.e. +-100 std, so it is
#   a plain N(0, .02); Flax's truncated_normal(.02) cuts at +-2 std and gave std .0176;
# - patch embedding: timm leaves PyTorch's Conv2d default, U(+-1/sqrt(fan_in)) for weight and bias
#   (kaiming_uniform with a = sqrt(5)); Flax's default lecun_normal had 1.7x its std and a zero bias.
_dense_init = nn.initializers.normal(0.02)
_patch_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _patch_bias_init(fan_in: int):
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _proj_init(width: int):
    return nn.initializers.normal(width ** -0.5)  # the PyTorch backend's projection init (CLIP's)


def resize_pos_embed(pe: np.ndarray | jax.Array, grid: int) -> np.ndarray:
    """Resize a learned [N, D] position embedding to grid*grid tokens.

    Bicubic with antialias, as timm's ``resample_abs_pos_embed`` in the PyTorch backend
    (``tests/test_jax_parity.py`` compares the two)."""
    pe = np.asarray(pe, np.float32)
    old = int(round(math.sqrt(pe.shape[0])))
    if old == grid:
        return pe
    img = pe.reshape(old, old, -1)
    out = jax.image.resize(img, (grid, grid, img.shape[-1]), method="bicubic", antialias=True)
    return np.asarray(out, np.float32).reshape(grid * grid, -1)


class Mlp(nn.Module):
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
        x = nn.gelu(x, approximate=False)  # exact (erf) GELU, as nn.GELU() in torch
        return nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(x)


class Attention(nn.Module):
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask: Optional[jax.Array] = None):
        b, n, width = x.shape
        hd = width // self.heads
        # One fused qkv projection laid out [q | k | v], heads contiguous: the torch layout.
        qkv = nn.Dense(3 * width, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(b, n, 3, self.heads, hd), 3, axis=2)
        q, k, v = (t[:, :, 0] for t in (q, k, v))  # [B, N, H, hd]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(hd)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, width)
        return nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init, name="proj")(out)


class Block(nn.Module):
    """Pre-norm transformer block (timm ``Block``): x + attn(ln(x)); x + mlp(ln(x))."""

    heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
        x = x + Attention(self.heads, self.dtype, name="attn")(y, mask)
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
        return x + Mlp(self.mlp_dim, self.dtype, name="mlp")(y)


def _block_cls(remat: bool):
    # Activation checkpointing per block: only block inputs are kept; the backward pass recomputes
    # the rest (recipe.train.grad_checkpointing; costs one more forward, see costmodels/flops.py).
    return nn.remat(Block) if remat else Block


class ImageTower(nn.Module):
    spec: encoders.VisionTower
    embed_dim: int
    learned_pos: bool = False
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, image: jax.Array, keep: Optional[jax.Array] = None) -> jax.Array:
        """image float [B, 3, H, W]; keep int [B, K] kept patch indices or None -> [B, embed_dim]."""
        s = self.spec
        x = jnp.transpose(image, (0, 2, 3, 1)).astype(self.dtype)  # NCHW -> NHWC
        x = nn.Conv(s.width, (s.patch, s.patch), strides=(s.patch, s.patch), padding="VALID", dtype=self.dtype,
                    kernel_init=_patch_init, bias_init=_patch_bias_init(3 * s.patch * s.patch), name="patch_embed")(x)
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        if self.learned_pos:
            # Initialised by the trainer from the previous stage's embedding (fixed or learned).
            pe = self.param("pos_embed", lambda _k: jnp.asarray(sincos_2d(gh, d)))
        else:
            pe = jnp.asarray(sincos_2d(gh, d))
        x = x + pe[None].astype(self.dtype)
        if keep is not None:
            x = jnp.take_along_axis(x, keep[:, :, None].astype(jnp.int32), axis=1)
        if s.class_token:  # OpenCLIP's token (clipa-export): in attention, not in the pool, no position of its own
            cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))  # timm's init
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
        for i in range(s.depth):
            x = _block_cls(self.remat)(s.heads, s.mlp_dim, self.dtype, name=f"blocks_{i}")(x)
        x = x[:, int(s.class_token):].mean(axis=1)  # global average pool over the kept patch tokens
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="fc_norm")(x)
        return nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, kernel_init=_proj_init(s.width), name="head")(x)


class TextTower(nn.Module):
    spec: encoders.TextTower
    embed_dim: int
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, text: jax.Array) -> jax.Array:
        """text int [B, L] CLIP BPE ids (<end> has the largest id) -> [B, embed_dim]."""
        s = self.spec
        n = text.shape[1]
        tok = nn.Embed(s.vocab, s.width, embedding_init=nn.initializers.normal(0.02), name="token_embedding")
        pos = self.param("positional_embedding", nn.initializers.normal(0.01), (s.max_len, s.width))
        x = (tok(text) + pos[None, :n]).astype(self.dtype)
        causal = jnp.tril(jnp.ones((n, n), bool))[None, None]
        for i in range(s.depth):
            x = _block_cls(self.remat)(s.heads, s.mlp_dim, self.dtype, name=f"blocks_{i}")(x, causal)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_final")(x)
        eot = jnp.argmax(text, axis=-1)  # <end> is the largest id in CLIP's vocabulary
        x = x[jnp.arange(x.shape[0]), eot]
        return nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, kernel_init=_proj_init(s.width),
                        name="text_projection")(x)


class CLIP(nn.Module):
    """Both towers and the learned temperature; returns L2-normalised float32 embeddings."""

    encoder: encoders.Encoder
    learned_pos: bool = False
    dtype: Any = jnp.float32
    remat: bool = False

    def setup(self):
        e = self.encoder
        self.visual = ImageTower(e.vision, e.embed_dim, self.learned_pos, self.dtype, self.remat)
        self.text = TextTower(e.text, e.embed_dim, self.dtype, self.remat)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(INIT_LOGIT_SCALE), ())

    def encode_image(self, image, keep=None):
        return _l2(self.visual(image, keep).astype(jnp.float32))

    def encode_text(self, text):
        return _l2(self.text(text).astype(jnp.float32))

    def __call__(self, image, text, keep=None):
        """-> (image_emb [B, E], text_emb [B, E], logit scale (a scalar, exp'd and clamped))."""
        scale = jnp.exp(jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE))
        return self.encode_image(image, keep), self.encode_text(text), scale


def _l2(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def build(encoder: encoders.Encoder, *, learned_pos: bool = False, dtype=jnp.float32, remat: bool = False) -> CLIP:
    return CLIP(encoder, learned_pos=learned_pos, dtype=dtype, remat=remat)


def init_params(model: CLIP, rng: jax.Array, image_size: int, text_len: int) -> dict:
    """Fresh float32 parameters (the ``params`` collection) for one stage's shapes."""
    img = jnp.zeros((1, 3, image_size, image_size), jnp.float32)
    txt = jnp.zeros((1, text_len), jnp.int32)
    return model.init(rng, img, txt)["params"]
