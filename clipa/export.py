"""A finished run's weights as a model OpenCLIP loads: ``open_clip.create_model_and_transforms('local-dir:OUT')``.

    OUT/open_clip_config.json          {"model_cfg": ..., "preprocess_cfg": ..., "clipa": provenance}
    OUT/open_clip_model.safetensors    OpenCLIP ``CLIP`` state dict (fp32), loaded with strict=True

The OpenCLIP model is its native ``VisionTransformer`` + ``TextTransformer`` configured as OpenCLIP's
own CLIPA configs configure it (``ViT-L-14-CLIPA.json``: ``no_ln_pre``, ``pool_type: avg``,
``final_ln_after_pool``) and computes what clipa's model computes (backends/README.md), up to float
rounding:

- class token: OpenCLIP's ViT always prepends one that takes part in attention, so only runs trained
  with ``encoder.class_token: true`` export (clipa's token has no position of its own: OpenCLIP's
  position 0 is written as zero);
- patch embedding: OpenCLIP's conv has no bias; clipa's bias is added to every patch position's
  embedding instead (the same sum);
- position embedding: written as ``learnable`` at the last stage's grid (a sin-cos table is just its values);
- LayerNorm eps 1e-6 (``norm_kwargs``), exact GELU, causal text mask, <end>-token (argmax) text
  pooling, CLIP BPE tokenizer with the last stage's text length as ``context_length``;
- temperature: clipa clamps exp(logit_scale) at 100 in the forward; the clamped value is written;
- preprocessing: the last stage's size, bicubic, shorter side then centre crop, CLIP mean/std
  (clipa's eval crops the centre square then resizes; the same for square images).

Anything else in the weights has no OpenCLIP counterpart and stops the export with one line naming it.
Needs numpy and safetensors only (no torch, no open_clip).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from clipa import fs
from clipa import recipe as recipe_mod
from clipa import rundir
from clipa.errors import UserError

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
FINAL = "final.safetensors"
LN_EPS = 1e-6  # the contract's LayerNorm eps (backends/README.md); OpenCLIP's default is 1e-5
MAX_LOGIT_SCALE = math.log(100.0)  # clipa's clamp (backends/torch/model.py)
# clipa block name -> OpenCLIP ResidualAttentionBlock name (nn.MultiheadAttention packs q, k, v as timm's qkv)
_BLOCK = {"norm1": "ln_1", "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
          "attn.proj": "attn.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def export(run_dir, out_dir: Path) -> Path:
    """Write OUT_DIR/open_clip_config.json and open_clip_model.safetensors from RUN_DIR's final weights.
    RUN_DIR may be a URL (a TPU pod's gs:// run directory, clipa/fs.py); OUT_DIR is local (OpenCLIP's
    ``local-dir:`` loads from there)."""
    from safetensors.numpy import load, save_file

    if fs.is_url(str(out_dir)):
        raise UserError(f"{out_dir}: the export folder must be local (OpenCLIP loads it with local-dir:)")
    run_dir, out_dir = fs.path(run_dir), Path(out_dir)
    if not (run_dir / rundir.RECIPE).is_file():
        raise UserError(f"{run_dir}: no {rundir.RECIPE}: not a clipa run directory")
    recipe = recipe_mod.load(run_dir / rundir.RECIPE)
    final = run_dir / rundir.CHECKPOINTS / FINAL
    if not final.is_file():
        raise UserError(f"{run_dir}: no {rundir.CHECKPOINTS}/{FINAL}: the run has not finished (clipa-run it again)")
    weights = load(final.read_bytes())
    cfg = config(recipe)
    state = _fit(convert(weights), cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, str(out_dir / WEIGHTS),
              metadata={"format": "pt"})  # "pt": OpenCLIP's loader reads it as a torch state dict
    achieved = rundir.read_achieved(run_dir)
    cfg["clipa"] = {"run_dir": str(run_dir.resolve()), "recipe": recipe.name, "encoder": recipe.encoder.name,
                    "stage": recipe.stages[-1].name, "zero_shot_top1": achieved.top1 if achieved else None,
                    "eval_set": achieved.eval_set if achieved else None}
    (out_dir / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


def config(recipe: recipe_mod.Recipe) -> dict:
    """OpenCLIP's ``open_clip_config.json`` for the recipe's last stage."""
    from clipa.backends.data.decode import CLIP_MEAN, CLIP_STD

    enc, last = recipe.encoder.spec, recipe.stages[-1]
    v, t = enc.vision, enc.text
    for tower, name in ((v, "vision"), (t, "text")):
        if tower.width % tower.heads:
            raise UserError(f"encoder {enc.name}: {name} width {tower.width} is not a multiple of its "
                            f"{tower.heads} heads (OpenCLIP derives heads from width / head_width)")
    norm = {"eps": LN_EPS}
    return {
        "model_cfg": {
            "embed_dim": enc.embed_dim,
            "quick_gelu": False,
            "vision_cfg": {"image_size": last.image_size, "patch_size": v.patch, "width": v.width, "layers": v.depth,
                           "head_width": v.width // v.heads, "mlp_ratio": v.mlp_dim / v.width,
                           "pos_embed_type": "learnable", "no_ln_pre": True, "pool_type": "avg",
                           "final_ln_after_pool": True, "norm_kwargs": norm},
            "text_cfg": {"context_length": last.text_len, "vocab_size": t.vocab, "width": t.width, "heads": t.heads,
                         "layers": t.depth, "mlp_ratio": t.mlp_dim / t.width, "pool_type": "argmax",
                         "no_causal_mask": False, "final_ln_after_pool": False, "norm_kwargs": norm},
        },
        "preprocess_cfg": {"size": last.image_size, "mode": "RGB", "mean": [float(x) for x in CLIP_MEAN],
                           "std": [float(x) for x in CLIP_STD], "interpolation": "bicubic",
                           "resize_mode": "shortest", "fill_color": 0},
    }


def convert(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """clipa's state dict (backends/torch/model.py names) -> OpenCLIP ``CLIP``'s; UserError naming the first
    difference OpenCLIP cannot express."""
    w = dict(weights)
    if "visual.cls_token" not in w:
        raise UserError("class token: the run's image tower has none, and OpenCLIP's VisionTransformer always "
                        "prepends one that takes part in attention; train with encoder.class_token: true "
                        "to export")
    out: dict[str, np.ndarray] = {}
    take = w.pop
    width = w["visual.pos_embed"].shape[-1]
    out["visual.conv1.weight"] = take("visual.patch_embed.proj.weight")
    out["visual.class_embedding"] = take("visual.cls_token").reshape(width)
    pos = take("visual.pos_embed")[0] + take("visual.patch_embed.proj.bias")[None]  # OpenCLIP's conv has no bias
    out["visual.positional_embedding"] = np.concatenate([np.zeros((1, width), pos.dtype), pos])
    _blocks(w, "visual.blocks", "visual.transformer.resblocks", out)
    out["visual.ln_post.weight"] = take("visual.fc_norm.weight")
    out["visual.ln_post.bias"] = take("visual.fc_norm.bias")
    out["visual.proj"] = take("image_proj.weight").T
    out["token_embedding.weight"] = take("text.token_embedding.weight")
    out["positional_embedding"] = take("text.pos_embed")[0]  # cut to context_length by _fit
    _blocks(w, "text.blocks", "transformer.resblocks", out)
    out["ln_final.weight"], out["ln_final.bias"] = take("text.norm.weight"), take("text.norm.bias")
    out["text_projection"] = take("text_proj.weight").T
    out["logit_scale"] = np.minimum(take("logit_scale"), np.float32(MAX_LOGIT_SCALE)).astype(np.float32)
    if w:
        raise UserError(f"weights: {sorted(w)[0]} has no counterpart in OpenCLIP's CLIP model")
    return out


def _blocks(w: dict, src: str, dst: str, out: dict) -> None:
    """Move every ``src.i.*`` block tensor of ``w`` to ``dst.i.*`` in ``out`` under OpenCLIP's names."""
    for key in sorted(k for k in w if k.startswith(src + ".")):
        i, rest = key[len(src) + 1:].split(".", 1)
        for ours, theirs in _BLOCK.items():
            if rest == ours or rest.startswith(ours + "."):
                out[f"{dst}.{i}.{theirs}{rest[len(ours):]}"] = w.pop(key)
                break


def _fit(state: dict, cfg: dict) -> dict:
    """``state`` with the text positions cut to ``context_length``; UserError when the image positions do
    not fit the config's image size (weights from another stage)."""
    m = cfg["model_cfg"]
    state["positional_embedding"] = state["positional_embedding"][: m["text_cfg"]["context_length"]]
    grid = m["vision_cfg"]["image_size"] // m["vision_cfg"]["patch_size"]
    if state["visual.positional_embedding"].shape[0] != grid * grid + 1:
        raise UserError(f"weights: {state['visual.positional_embedding'].shape[0] - 1} patch positions, but the last "
                        f"stage's {m['vision_cfg']['image_size']} px gives {grid * grid}")
    return state
