"""The encoder registry: the single source of tower shapes.

The FLOPs model, the memory model and both backends read these shapes, so the cost
model and the trained network can never disagree about what "L/16" is.

Shapes of the published sizes are copied from OpenCLIP's model configs
(open_clip/model_configs/ViT-*-16.json, ViT-*-14.json, as shipped in open_clip_torch 2.x;
``tests/test_encoders.py`` checks them against the installed package). CLIPA uses the same
image towers with global average pooling and no class token; its text towers have the same
width/depth/heads as the OpenCLIP ones (open_clip ViT-*-CLIPA.json).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from clipa.registry import Registry

# CLIP BPE tokenizer shipped with open_clip (bpe_simple_vocab_16e6.txt.gz): 49408 tokens.
CLIP_VOCAB = 49408
CLIP_CONTEXT = 77


@dataclass(frozen=True)
class VisionTower:
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch: int
    # A learned class token prepended to the patch tokens (in attention, left out of the average pool):
    # OpenCLIP's VisionTransformer always has one, CLIPA's big_vision towers have none. Set per recipe
    # (``encoder.class_token``) for a model ``clipa-export`` can write as an OpenCLIP model.
    class_token: bool = False

    def tokens(self, image_size: int) -> int:
        """Patch tokens at ``image_size`` px (no class token: CLIPA pools by global average)."""
        return (image_size // self.patch) ** 2

    def kept_tokens(self, image_size: int, mask_ratio: float = 0.0) -> int:
        """Patch tokens left after masking ``mask_ratio`` of them (at least one; the epsilon keeps
        ratios like 0.3 x 256 from flooring one token short in floating point)."""
        return max(1, math.floor(self.tokens(image_size) * (1.0 - mask_ratio) + 1e-9))


@dataclass(frozen=True)
class TextTower:
    width: int
    depth: int
    heads: int
    mlp_dim: int
    vocab: int = CLIP_VOCAB
    max_len: int = CLIP_CONTEXT


@dataclass(frozen=True)
class Encoder:
    name: str
    vision: VisionTower
    text: TextTower
    embed_dim: int
    source: str


def _enc(name, vw, vd, vh, vmlp, patch, tw, td, th, embed, source, vocab=CLIP_VOCAB) -> Encoder:
    return Encoder(
        name=name,
        vision=VisionTower(width=vw, depth=vd, heads=vh, mlp_dim=vmlp, patch=patch),
        text=TextTower(width=tw, depth=td, heads=th, mlp_dim=4 * tw, vocab=vocab),
        embed_dim=embed,
        source=source,
    )


_OC = "open_clip model_configs/{}.json"
ENCODERS = Registry[Encoder]("encoder", aliases={"G/14": "bigG/14"})
register = ENCODERS.register


for _e in (
    _enc("S/16", 384, 12, 6, 1536, 16, 384, 12, 6, 384, _OC.format("ViT-S-16")),
    _enc("B/16", 768, 12, 12, 3072, 16, 512, 12, 8, 512, _OC.format("ViT-B-16")),
    _enc("L/16", 1024, 24, 16, 4096, 16, 768, 12, 12, 768, _OC.format("ViT-L-16")),
    _enc("L/14", 1024, 24, 16, 4096, 14, 768, 12, 12, 768, _OC.format("ViT-L-14")),
    _enc("H/14", 1280, 32, 16, 5120, 14, 1024, 24, 16, 1024, _OC.format("ViT-H-14")),
    # ViT-g/14 (giant, Zhai et al. 2022 "Scaling Vision Transformers", Table 2): mlp 6144.
    _enc("g/14", 1408, 40, 16, 6144, 14, 1024, 24, 16, 1024, _OC.format("ViT-g-14")),
    # ViT-G/14 (Zhai et al. 2022): OpenCLIP calls it bigG; CLIPA-v2 calls it G/14.
    _enc("bigG/14", 1664, 48, 16, 8192, 14, 1280, 32, 20, 1280, _OC.format("ViT-bigG-14")),
    # Tiny entries for tests and the CPU demo (big_vision's "mu", torchtitan's debugmodel).
    _enc("test", 64, 2, 2, 256, 8, 64, 2, 2, 32, "clipa test size (not a published model)"),
    _enc("demo", 128, 4, 4, 512, 8, 128, 3, 4, 128, "clipa CPU demo size (not a published model)"),
):
    register(_e)

# Look an encoder up by its short name ("L/16"), or raise a UserError listing the known ones.
get = ENCODERS.get
