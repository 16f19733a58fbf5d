"""Weights between the PyTorch backend (state_dict / safetensors) and Flax params, both ways.

Works on plain numpy: a torch state_dict given as ``{name: np.ndarray}`` (what
``safetensors.numpy.load_file`` returns), so converting never imports torch. Names on the torch
side are those documented in ``backends/torch/model.py``; Linear weights are [out, in] there and
kernels [in, out] here, the patch conv is OIHW there and HWIO here.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from clipa.errors import UserError
from clipa.backends.posembed import sincos_2d

_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_NORMS = ("norm1", "norm2")


def _block_pairs(torch_prefix: str, flax_prefix: tuple) -> list:
    """(torch name, flax path, to_flax, to_torch) for one pre-norm block."""
    out = []
    for lin in _LINEARS:
        fp = flax_prefix + tuple(lin.split("."))
        out.append((f"{torch_prefix}.{lin}.weight", fp + ("kernel",), _t, _t))
        out.append((f"{torch_prefix}.{lin}.bias", fp + ("bias",), _id, _id))
    for n in _NORMS:
        out.append((f"{torch_prefix}.{n}.weight", flax_prefix + (n, "scale"), _id, _id))
        out.append((f"{torch_prefix}.{n}.bias", flax_prefix + (n, "bias"), _id, _id))
    return out


def _id(x):
    return x


def _t(x):
    return np.ascontiguousarray(x.T)


def _squeeze0(x):
    return x[0]


def _unsqueeze0(x):
    return x[None]


def _oihw_to_hwio(x):
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0))


def _hwio_to_oihw(x):
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))


def _pairs(vision_depth: int, text_depth: int, learned_pos: bool, class_token: bool) -> list:
    p = [
        ("visual.patch_embed.proj.weight", ("visual", "patch_embed", "kernel"), _oihw_to_hwio, _hwio_to_oihw),
        ("visual.patch_embed.proj.bias", ("visual", "patch_embed", "bias"), _id, _id),
        ("visual.fc_norm.weight", ("visual", "fc_norm", "scale"), _id, _id),
        ("visual.fc_norm.bias", ("visual", "fc_norm", "bias"), _id, _id),
        ("image_proj.weight", ("visual", "head", "kernel"), _t, _t),
        ("text.token_embedding.weight", ("text", "token_embedding", "embedding"), _id, _id),
        ("text.pos_embed", ("text", "positional_embedding"), _squeeze0, _unsqueeze0),
        ("text.norm.weight", ("text", "ln_final", "scale"), _id, _id),
        ("text.norm.bias", ("text", "ln_final", "bias"), _id, _id),
        ("text_proj.weight", ("text", "text_projection", "kernel"), _t, _t),
        ("logit_scale", ("logit_scale",), _id, _id),
    ]
    if learned_pos:
        p.append(("visual.pos_embed", ("visual", "pos_embed"), _squeeze0, _unsqueeze0))
    if class_token:
        p.append(("visual.cls_token", ("visual", "cls_token"), _id, _id))
    for i in range(vision_depth):
        p += _block_pairs(f"visual.blocks.{i}", ("visual", f"blocks_{i}"))
    for i in range(text_depth):
        p += _block_pairs(f"text.blocks.{i}", ("text", f"blocks_{i}"))
    return p


def _depth(keys, prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def torch_to_flax(state: dict[str, np.ndarray], learned_pos: bool = False) -> dict:
    """A torch state_dict (numpy values) -> Flax ``params``.

    With ``learned_pos`` the image position embedding becomes a parameter; otherwise it is the
    fixed sin-cos one, which the Flax model computes itself (the torch value is not read).
    Every other torch tensor must be used exactly once: an unknown or missing name is an error.
    """
    keys = set(state)
    pairs = _pairs(_depth(keys, "visual.blocks"), _depth(keys, "text.blocks"), learned_pos, "visual.cls_token" in keys)
    params: dict = {}
    used = set()
    for tname, fpath, to_flax, _ in pairs:
        if tname not in state:
            raise UserError(f"torch checkpoint: missing tensor {tname!r}")
        _set(params, fpath, np.asarray(to_flax(np.asarray(state[tname], np.float32))))
        used.add(tname)
    extra = keys - used - {"visual.pos_embed"}
    if extra:
        raise UserError(f"torch checkpoint: unexpected tensor(s) {sorted(extra)[:3]}")
    return params


def flax_to_torch(params: dict) -> dict[str, np.ndarray]:
    """Flax ``params`` -> torch state_dict names and layouts (numpy float32).

    Without a learned image position embedding ``visual.pos_embed`` is left out (it depends on the
    resolution, which params do not carry): use ``flax_to_torch_full`` for a complete state_dict.
    """
    vd = sum(1 for k in params["visual"] if k.startswith("blocks_"))
    td = sum(1 for k in params["text"] if k.startswith("blocks_"))
    learned = "pos_embed" in params["visual"]
    out = {}
    for tname, fpath, _, to_torch in _pairs(vd, td, learned, "cls_token" in params["visual"]):
        out[tname] = np.asarray(to_torch(np.asarray(_get(params, fpath), np.float32)))
    return out


def flax_to_torch_full(params: dict, image_size: int, patch: int) -> dict[str, np.ndarray]:
    """As ``flax_to_torch`` but always with ``visual.pos_embed`` (sin-cos at ``image_size`` if fixed):
    a complete state_dict that ``CLIPA.load_state_dict(strict=True)`` accepts."""
    out = flax_to_torch(params)
    if "visual.pos_embed" not in out:
        width = params["visual"]["patch_embed"]["bias"].shape[0]
        out["visual.pos_embed"] = sincos_2d(image_size // patch, width)[None]
    return out


def load_safetensors(path: str | Path, learned_pos: bool = False) -> dict:
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    return torch_to_flax(load_file(str(path)), learned_pos=learned_pos)


def _set(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple):
    for k in path:
        tree = tree[k]
    return tree
