"""FLOPs per sample of the CLIPA towers (FLOPs = 2 x multiply-adds).

What is counted: every matmul and convolution of the model described in ``backends/README.md``
(patch-embedding conv, QKV/output projections, attention QK^T and AV, MLP, final projections) and,
when ``global_batch`` is given, the contrastive-logit matmul. What is left out, on purpose: LayerNorm,
GELU, softmax, residual adds, position-embedding adds, pooling, the token-embedding lookup and the
loss' exp/log. They are a few percent of the work at most and are not what the hardware's matmul
peak is spent on; ``torch.utils.flop_counter.FlopCounterMode`` leaves out exactly the same ops, so
``tests/test_costmodels_flops.py`` compares like with like.

Attention is counted as dense (no causal-mask saving in the text tower), which is what SDPA and
FlopCounterMode do.
"""
from __future__ import annotations

from typing import Optional

from clipa.encoders import Encoder

# Backward costs two forward matmuls per forward matmul (input-grad and weight-grad), hence 3x
# for fwd+bwd (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Sec. 2.1).
TRAIN_MULTIPLIER = 3.0


def _blocks_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
    """Forward FLOPs of ``depth`` pre-norm transformer blocks over ``tokens`` tokens (one sample)."""
    n, d = float(tokens), float(width)
    proj = 2.0 * n * d * (3.0 * d) + 2.0 * n * d * d       # QKV and attention-output projections
    attn = 2.0 * n * n * d + 2.0 * n * n * d                # QK^T and AV, summed over heads
    mlp = 2.0 * n * d * mlp_dim * 2.0                       # fc1 and fc2
    return depth * (proj + attn + mlp)


def vision_forward_flops(enc: Encoder, image_tokens: int, patch_tokens: Optional[int] = None) -> float:
    """Forward FLOPs of the image tower for one image, ``image_tokens`` tokens reaching the blocks.

    ``patch_tokens``: tokens the patch embedding runs over (before a mask drops some); defaults to
    ``image_tokens`` (resize reduction). Includes the pooled feature's projection to ``embed_dim``.
    """
    v = enc.vision
    if image_tokens < 1:
        raise ValueError(f"image_tokens must be >= 1, got {image_tokens}")
    embedded = image_tokens if patch_tokens is None else patch_tokens
    patch = 2.0 * embedded * (3 * v.patch * v.patch) * v.width
    head = 2.0 * v.width * enc.embed_dim
    return patch + _blocks_flops(image_tokens + v.class_token, v.width, v.depth, v.mlp_dim) + head


def eval_image_flops(enc: Encoder, image_size: int) -> float:
    """Forward FLOPs of one image in a zero-shot evaluation at ``image_size`` px: every patch token, no
    mask (the evaluation sees whole images, backends/*/evaluate.py)."""
    return vision_forward_flops(enc, enc.vision.tokens(image_size))


def text_forward_flops(enc: Encoder, text_len: int) -> float:
    """Forward FLOPs of the text tower for one caption of ``text_len`` tokens (incl. start/end).

    Includes the <end> token's projection to ``embed_dim``; the embedding lookup costs no FLOPs.
    """
    t = enc.text
    if text_len < 1:
        raise ValueError(f"text_len must be >= 1, got {text_len}")
    return _blocks_flops(text_len, t.width, t.depth, t.mlp_dim) + 2.0 * t.width * enc.embed_dim


def contrastive_flops_per_sample(enc: Encoder, global_batch: int) -> float:
    """Forward FLOPs of the image-text logit matmul, per sample: (B x E) @ (E x B) / B = 2 B E."""
    return 2.0 * global_batch * enc.embed_dim


def forward_flops(enc: Encoder, image_tokens: int, text_len: int, *, patch_tokens: Optional[int] = None,
                  global_batch: Optional[int] = None) -> float:
    """Forward FLOPs of one sample (both towers and projections; logits only if ``global_batch``)."""
    total = vision_forward_flops(enc, image_tokens, patch_tokens) + text_forward_flops(enc, text_len)
    if global_batch is not None:
        total += contrastive_flops_per_sample(enc, global_batch)
    return total


def recompute_flops(enc: Encoder, image_tokens: int, text_len: int) -> float:
    """FLOPs that per-block activation checkpointing adds for one sample.

    Each block's forward runs again in backward, except its last matmul (MLP fc2): fc2's output is
    not saved for backward, so torch's non-reentrant checkpoint stops recomputing before it (early
    stop, the default) and XLA drops it as dead code under ``jax.checkpoint``. The patch embedding
    and the projections are outside the checkpointed blocks. Close to one more forward (the usual
    "4x" rule): 3.7x for B/16 at 224 px.
    """
    v, t = enc.vision, enc.text
    n = image_tokens + v.class_token  # the blocks' sequence: kept patch tokens and OpenCLIP's class token if any
    vis = _blocks_flops(n, v.width, v.depth, v.mlp_dim) - v.depth * 2.0 * n * v.mlp_dim * v.width
    txt = _blocks_flops(text_len, t.width, t.depth, t.mlp_dim) - t.depth * 2.0 * text_len * t.mlp_dim * t.width
    return vis + txt


def train_flops_per_sample(enc: Encoder, image_tokens: int, text_len: int, recompute: bool = False, *,
                           patch_tokens: Optional[int] = None, global_batch: Optional[int] = None) -> float:
    """Training FLOPs of one sample: 3x forward, plus ``recompute_flops`` with activation checkpointing.

    The contrastive-logit matmul (2 B E per sample, i.e. < 0.1% for B/16 at B = 32k) is included
    only when ``global_batch`` is given; the published GPU-hours the throughput model is fitted to
    are reproduced without it.
    """
    fwd = forward_flops(enc, image_tokens, text_len, patch_tokens=patch_tokens, global_batch=global_batch)
    return TRAIN_MULTIPLIER * fwd + (recompute_flops(enc, image_tokens, text_len) if recompute else 0.0)


def stage_train_flops(enc: Encoder, stage, recompute: bool = False) -> float:
    """Training FLOPs of one sample of ``stage`` (a ``clipa.recipe.Stage`` or ``costmodels.predict.StageShape``:
    ``image_size``, ``text_len``, ``image_tokens(enc)``): the patch embedding runs on every patch, masked or
    not, the blocks on the tokens kept.

    The one count of a stage's FLOPs: the planner, ``predict_recipe``, the achieved MFU in metrics.jsonl
    and the report all call it. ``recompute=True`` adds activation checkpointing's extra forward (the FLOPs
    the device executes, which set the stage's time); MFU is counted without it (PaLM's definition,
    Chowdhery et al. 2022, App. B: rematerialisation is not model work).
    """
    return train_flops_per_sample(enc, stage.image_tokens(enc), stage.text_len, recompute,
                                  patch_tokens=enc.vision.tokens(stage.image_size))
