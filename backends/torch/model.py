"""The CLIPA model in PyTorch: a timm ViT image tower, a causal text transformer, a learned temperature.

Exactly the architecture of backends/README.md; shapes come only from ``clipa.encoders``.
Parameter names are stable (the JAX backend's converter reads them from the safetensors files):

    visual.patch_embed.proj.{weight,bias}   visual.pos_embed [1, grid*grid, W]
    visual.blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}   (timm names)
    visual.fc_norm.{weight,bias}            image_proj.weight [embed_dim, W]
    text.token_embedding.weight             text.pos_embed [1, 77, W]
    text.blocks.{i}....  (same block)       text.norm.{weight,bias}   text_proj.weight [embed_dim, W]
    logit_scale  (scalar, log of the inverse temperature)
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipa.backends.posembed import sincos_2d
from clipa.encoders import Encoder

# LayerNorm eps 1e-6 in every block (timm ViT default; big_vision's CLIPA towers use the same).
_LN = partial(nn.LayerNorm, eps=1e-6)
# CLIP's temperature: initialised to 1/0.07 and clamped at 100 (Radford et al. 2021, section 2.5).
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


class TextTower(nn.Module):
    """Token + learned position embedding -> causal pre-norm blocks -> LayerNorm -> feature at <end>."""

    def __init__(self, enc: Encoder):
        super().__init__()
        t = enc.text
        self.token_embedding = nn.Embedding(t.vocab, t.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, t.max_len, t.width))
        self.blocks = nn.Sequential(*[
            Block(t.width, t.heads, mlp_ratio=t.mlp_dim / t.width, qkv_bias=True, norm_layer=_LN, act_layer=nn.GELU)
            for _ in range(t.depth)
        ])
        self.norm = _LN(t.width)
        self.grad_checkpointing = False
        # open_clip's text init (CLIP): embeddings N(0, 0.02), positions N(0, 0.01).
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        self.blocks.apply(_init_linear)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        L = text.shape[1]
        x = self.token_embedding(text) + self.pos_embed[:, :L]
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, None, True, use_reentrant=False)
            else:
                x = blk(x, is_causal=True)
        x = self.norm(x)
        # <end> has the largest id in CLIP's vocabulary (OpenAI CLIP's argmax pooling).
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]


def _init_linear(m: nn.Module) -> None:
    # timm ViT's default init for block linears: trunc-normal(0.02) weights, zero bias.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class CLIPA(nn.Module):
    """Image tower + text tower + projections + logit scale. ``set_stage`` adapts the position embedding."""

    def __init__(self, enc: Encoder, image_size: int):
        super().__init__()
        v = enc.vision
        self.encoder = enc
        # CLIPA's image tower in timm terms: no class token, GAP, no pre-norm, LayerNorm after the pool.
        # ``v.class_token``: a class token in attention but not in the pool (OpenCLIP's ViT; clipa-export).
        self.visual = VisionTransformer(
            img_size=image_size, patch_size=v.patch, num_classes=0, global_pool="avg", embed_dim=v.width,
            depth=v.depth, num_heads=v.heads, mlp_ratio=v.mlp_dim / v.width, qkv_bias=True, class_token=v.class_token,
            no_embed_class=True, pre_norm=False, fc_norm=True, pos_embed="learn", norm_layer=_LN, act_layer=nn.GELU,
        )
        # The grid changes between stages; the position embedding is managed by set_stage, not timm.
        self.visual.patch_embed.strict_img_size = False
        self.text = TextTower(enc)
        self.image_proj = nn.Linear(v.width, enc.embed_dim, bias=False)
        self.text_proj = nn.Linear(enc.text.width, enc.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=v.width ** -0.5)
        nn.init.normal_(self.text_proj.weight, std=enc.text.width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.pos_embed_mode = "sincos"
        self.set_stage(image_size, "sincos")

    @property
    def grid(self) -> int:
        return math.isqrt(self.visual.pos_embed.shape[1])

    @torch.no_grad()
    def set_stage(self, image_size: int, pos_embed: str) -> None:
        """Adapt to a stage: ``sincos`` -> fixed sin-cos at the new grid (not trained); ``learned`` -> a
        trained parameter initialised from the current one, resized by bicubic interpolation."""
        grid = image_size // self.encoder.vision.patch
        pe = self.visual.pos_embed
        if pos_embed == "sincos":
            new = torch.from_numpy(sincos_2d(grid, pe.shape[-1]))[None].to(pe.device, pe.dtype)
        elif pos_embed == "learned":
            new = pe.detach()
            if grid != self.grid:
                new = resample_abs_pos_embed(new.float(), [grid, grid], [self.grid, self.grid],
                                             num_prefix_tokens=0).to(pe.dtype)
        else:
            raise ValueError(f"unknown pos_embed {pos_embed!r}")
        self.visual.pos_embed = nn.Parameter(new.clone(), requires_grad=pos_embed == "learned")
        self.pos_embed_mode = pos_embed

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.grad_checkpointing = enable

    def encode_image(self, image: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """image [B,3,H,W] -> [B, embed_dim] (unnormalised); ``keep`` [B,K] indices of kept patch tokens."""
        v = self.visual
        x = v.patch_embed(image)
        if x.shape[1] != v.pos_embed.shape[1]:
            raise ValueError(f"image gives {x.shape[1]} patches but the position embedding has "
                             f"{v.pos_embed.shape[1]}; call set_stage for this image size")
        x = x + v.pos_embed
        if keep is not None:
            x = torch.gather(x, 1, keep.long()[..., None].expand(-1, -1, x.shape[-1]))
        if v.cls_token is not None:  # no position of its own: OpenCLIP's is exported as zero
            x = torch.cat([v.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if v.grad_checkpointing and self.training:
            for blk in v.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = v.blocks(x)
        x = v.fc_norm(x[:, v.num_prefix_tokens:].mean(dim=1))
        return self.image_proj(x)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """text int [B, L] -> [B, embed_dim] (unnormalised)."""
        return self.text_proj(self.text(text))

    def forward(self, image: torch.Tensor, text: torch.Tensor, keep: Optional[torch.Tensor] = None):
        """-> (image features, text features) L2-normalised in fp32, and the clamped logit scale (exp)."""
        img = F.normalize(self.encode_image(image, keep).float(), dim=-1)
        txt = F.normalize(self.encode_text(text).float(), dim=-1)
        return img, txt, self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()
