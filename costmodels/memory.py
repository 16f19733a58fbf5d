"""Memory per device for training: parameters, gradients, AdamW state and activations (bytes).

The model is the one in ``backends/README.md`` (timm ``VisionTransformer(class_token=False,
global_pool='avg')`` image tower + OpenAI-CLIP text tower); ``param_count`` matches the real modules
exactly (``tests/test_costmodels_memory.py``).

Precision assumptions (bytes per parameter):
- ``bf16``: mixed precision as torch AMP / JAX with fp32 params: fp32 weights (4, they are also the
  master copy), fp32 gradients (4), AdamW first and second moments in fp32 (4 + 4) = 16 bytes.
  Activations saved for backward are bf16 (2), except the residual stream entering each LayerNorm,
  which autocast keeps in fp32 (4).
- ``fp32``: everything fp32: 4 + 4 + 8 = 16 bytes per parameter, activations 4 bytes.
``zero_shards`` divides the AdamW moments across devices (ZeRO stage 1; Rajbhandari et al. 2020).

Activations count the tensors autograd saves for backward (they dominate the peak); transient
buffers during backward and the allocator's fragmentation are covered by ``fits``' margin. Attention
is assumed fused (SDPA / flash: the N x N score matrix is not stored), as timm and open_clip run it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clipa.encoders import Encoder
from clipa.errors import UserError

PRECISIONS = ("bf16", "fp32")
_ACT_BYTES = {"bf16": 2, "fp32": 4}
_PARAM_BYTES, _GRAD_BYTES, _ADAM_BYTES = 4, 4, 8   # fp32 weights, fp32 grads, two fp32 moments
_RESID_BYTES = 4                                    # the residual stream stays fp32 (params are fp32)

# Design margin, not a measurement: the CUDA context, cuBLAS workspaces, transient backward
# buffers and allocator fragmentation take memory the model above does not count; `fits` keeps
# this fraction of the device free. Override with fits(..., margin=...).
DEFAULT_MARGIN = 0.10


@dataclass
class MemoryBreakdown:
    """Bytes per device."""

    params: float
    grads: float
    optimizer: float
    activations: float
    total: float


def _block_params(d: int, m: int) -> int:
    # 2 LayerNorms (4d) + qkv (3d^2 + 3d) + out proj (d^2 + d) + fc1 (dm + m) + fc2 (md + d)
    return 4 * d * d + 2 * d * m + 9 * d + m


def vision_params(enc: Encoder, image_size: Optional[int] = None) -> int:
    """Trainable parameters of the image tower.

    ``image_size``: count a learned position embedding for that resolution (``pos_embed: learned``
    stages); None = fixed 2-D sin-cos embedding, which is a buffer, not a parameter.
    """
    v = enc.vision
    patch = 3 * v.patch * v.patch * v.width + v.width                 # conv with bias
    pos = v.tokens(image_size) * v.width if image_size is not None else 0
    norm_after_pool = 2 * v.width
    proj = v.width * enc.embed_dim                                    # no bias
    cls = v.width if v.class_token else 0                             # OpenCLIP's class token (clipa-export)
    return patch + pos + cls + v.depth * _block_params(v.width, v.mlp_dim) + norm_after_pool + proj


def text_params(enc: Encoder) -> int:
    """Trainable parameters of the text tower (77 learned positions, sliced to the text length)."""
    t = enc.text
    emb = t.vocab * t.width + t.max_len * t.width
    return emb + t.depth * _block_params(t.width, t.mlp_dim) + 2 * t.width + t.width * enc.embed_dim


def param_count(enc: Encoder, image_size: Optional[int] = None) -> int:
    """All trainable parameters: both towers and the logit scale."""
    return vision_params(enc, image_size) + text_params(enc) + 1


def _block_activation_bytes(tokens: int, d: int, m: int, heads: int, act: int, resid: int) -> float:
    """Bytes one pre-norm block saves for backward, per sample.

    Saved: LN1 input (residual, ``resid`` bytes) and its 2 fp32 stats per token; LN1 output (qkv
    input); q, k, v; attention output (proj input) and SDPA's fp32 logsumexp per head; LN2 input
    (residual) and stats; LN2 output (fc1 input); fc1 output (GELU input); GELU output (fc2 input).
    """
    n = float(tokens)
    residual = 2 * n * d * resid
    stats = 2 * 2 * n * 4 + n * heads * 4
    bf = n * (d + 3 * d + d + d) + n * 2 * m
    return residual + stats + bf * act


def _tower_activation_bytes(tokens, width, depth, mlp, heads, act, resid, checkpointing) -> float:
    block = _block_activation_bytes(tokens, width, mlp, heads, act, resid)
    if not checkpointing:
        return depth * block
    # Checkpointing keeps each block's input; backward recomputes one block at a time.
    return depth * tokens * width * resid + block


def vision_activation_bytes(enc: Encoder, image_tokens: int, *, grad_checkpointing: bool,
                            precision: str = "bf16") -> float:
    """Bytes the image tower's blocks save for backward, per image."""
    v = enc.vision
    return _tower_activation_bytes(image_tokens + v.class_token, v.width, v.depth, v.mlp_dim, v.heads, _ACT_BYTES[precision],
                                   _RESID_BYTES, grad_checkpointing)


def text_activation_bytes(enc: Encoder, text_len: int, *, grad_checkpointing: bool, precision: str = "bf16") -> float:
    """Bytes the text tower's blocks save for backward, per caption."""
    t = enc.text
    return _tower_activation_bytes(text_len, t.width, t.depth, t.mlp_dim, t.heads, _ACT_BYTES[precision],
                                   _RESID_BYTES, grad_checkpointing)


def activation_bytes(enc: Encoder, per_device_batch: int, image_tokens: int, text_len: int, *,
                     grad_checkpointing: bool, precision: str = "bf16",
                     image_size: Optional[int] = None, global_batch: Optional[int] = None) -> float:
    """Bytes of activations saved for backward on one device.

    ``image_size`` (px) adds the input image kept by the patch-embedding conv (defaults to the
    size implied by ``image_tokens``); ``global_batch`` sizes the B_local x B_global logit matrices
    (defaults to ``per_device_batch``).
    """
    act = _ACT_BYTES[precision]
    v = enc.vision
    vis = vision_activation_bytes(enc, image_tokens, grad_checkpointing=grad_checkpointing, precision=precision)
    txt = text_activation_bytes(enc, text_len, grad_checkpointing=grad_checkpointing, precision=precision)
    side = image_size if image_size is not None else int(round(image_tokens ** 0.5)) * v.patch
    image_in = 3 * side * side * act
    # Two logit matrices (image->text, text->image) and their softmax outputs, fp32.
    gb = global_batch if global_batch is not None else per_device_batch
    logits = 4 * gb * 4
    return per_device_batch * (vis + txt + image_in + logits)


def per_device_memory(enc: Encoder, per_device_batch: int, image_tokens: int, text_len: int, *,
                      grad_checkpointing: bool, precision: str = "bf16", zero_shards: int = 1,
                      image_size: Optional[int] = None, global_batch: Optional[int] = None) -> MemoryBreakdown:
    """Training memory on one device (bytes) for ``per_device_batch`` samples."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if zero_shards < 1:
        raise UserError(f"zero_shards must be >= 1, got {zero_shards}")
    n = param_count(enc)
    params = float(n * _PARAM_BYTES)
    grads = float(n * _GRAD_BYTES)
    optimizer = float(n * _ADAM_BYTES) / zero_shards
    acts = activation_bytes(enc, per_device_batch, image_tokens, text_len, grad_checkpointing=grad_checkpointing,
                            precision=precision, image_size=image_size, global_batch=global_batch)
    return MemoryBreakdown(params, grads, optimizer, acts, params + grads + optimizer + acts)


def fits(enc: Encoder, per_device_batch: int, image_tokens: int, text_len: int, hw, *,
         grad_checkpointing: bool, precision: str = "bf16", zero_shards: int = 1,
         margin: float = DEFAULT_MARGIN) -> bool:
    """Whether training fits in one device of ``hw`` (a ``hardware.Hardware``), keeping ``margin`` free."""
    mem = per_device_memory(enc, per_device_batch, image_tokens, text_len, grad_checkpointing=grad_checkpointing,
                            precision=precision, zero_shards=zero_shards)
    return mem.total <= (1.0 - margin) * hw.memory_bytes


def max_per_device_batch(enc: Encoder, image_tokens: int, text_len: int, hw, *, grad_checkpointing: bool,
                         precision: str = "bf16", zero_shards: int = 1, margin: float = DEFAULT_MARGIN) -> int:
    """Largest per-device batch that ``fits`` (0 if not even the model state fits). Memory is linear in batch."""
    fixed = per_device_memory(enc, 1, image_tokens, text_len, grad_checkpointing=grad_checkpointing,
                              precision=precision, zero_shards=zero_shards)
    state = fixed.params + fixed.grads + fixed.optimizer
    budget = (1.0 - margin) * hw.memory_bytes - state
    if budget <= 0:
        return 0
    b = int(budget // fixed.activations)
    # The logit matrices grow with the batch itself; step down until it fits.
    while b > 0 and not fits(enc, b, image_tokens, text_len, hw, grad_checkpointing=grad_checkpointing,
                             precision=precision, zero_shards=zero_shards, margin=margin):
        b = int(b * 0.99)
    return b
