"""The PyTorch CLIPA model, loss and schedule against independent references (timm, open_clip)."""
import math
import re

import numpy as np
import pytest
import torch

from clipa import encoders
from clipa.backends.torch import dist as tdist
from clipa.backends.posembed import sincos_2d
from clipa.backends.schedule import lr_at
from clipa.backends.torch.model import CLIPA
from clipa.backends.torch.trainer import build_optimizer
from clipa.recipe import OptimizerSpec, ScheduleSpec, Stage

torch.set_num_threads(1)
ENC = encoders.get("test")


def _model(size=32):
    torch.manual_seed(0)
    return CLIPA(ENC, size).eval()


def test_sincos_equals_open_clip():
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(64, 5)
    assert np.allclose(sincos_2d(5, 64), ref.astype(np.float32), atol=1e-6)


def test_image_tower_is_timms_vit_forward():
    m = _model()
    x = torch.randn(2, 3, 32, 32)
    # timm's own forward of the configured VisionTransformer (GAP, fc_norm, no class token).
    ref = m.image_proj(m.visual(x))
    assert torch.allclose(m.encode_image(x), ref, atol=1e-5)
    assert m.visual.cls_token is None and isinstance(m.visual.norm, torch.nn.Identity)


def test_keep_gathers_tokens():
    m = _model()
    x = torch.randn(2, 3, 32, 32)
    n = (32 // ENC.vision.patch) ** 2
    all_idx = torch.arange(n).repeat(2, 1)
    assert torch.allclose(m.encode_image(x, all_idx), m.encode_image(x), atol=1e-5)
    keep = torch.tensor([[0, 3, 5, 9], [1, 2, 7, 15]])
    # Without a class token the tower is permutation-equivariant, so only the kept set matters.
    assert torch.allclose(m.encode_image(x, keep), m.encode_image(x, keep.flip(1)), atol=1e-5)
    assert not torch.allclose(m.encode_image(x, keep), m.encode_image(x), atol=1e-3)


def test_text_feature_at_end_token_is_causal():
    m = _model()
    t = torch.tensor([[49406, 320, 1125, 49407, 0, 0], [49406, 320, 1125, 49407, 0, 0]])
    t2 = t.clone()
    t2[1, 4:] = torch.tensor([500, 600])  # tokens after <end> cannot change its feature (causal mask)
    f = m.encode_text(t2)
    assert torch.allclose(f[0], f[1], atol=1e-5)


def test_set_stage_pos_embed():
    m = _model(32)
    assert not m.visual.pos_embed.requires_grad and m.grid == 4
    m.set_stage(32, "learned")
    assert m.visual.pos_embed.requires_grad
    before = m.visual.pos_embed.detach().clone()
    assert torch.allclose(before[0], torch.from_numpy(sincos_2d(4, ENC.vision.width)))  # initialised from the current one
    m.set_stage(64, "learned")
    assert m.visual.pos_embed.shape == (1, 64, ENC.vision.width)
    m.encode_image(torch.randn(1, 3, 64, 64))
    m.set_stage(48, "sincos")
    assert torch.allclose(m.visual.pos_embed[0], torch.from_numpy(sincos_2d(6, ENC.vision.width)))
    with pytest.raises(ValueError, match="set_stage"):
        m.encode_image(torch.randn(1, 3, 32, 32))


def test_parameter_names_are_stable():
    names = set(_model().state_dict())
    expected_top = {"visual.patch_embed.proj.weight", "visual.patch_embed.proj.bias", "visual.pos_embed",
                    "visual.fc_norm.weight", "visual.fc_norm.bias", "image_proj.weight", "text.token_embedding.weight",
                    "text.pos_embed", "text.norm.weight", "text.norm.bias", "text_proj.weight", "logit_scale"}
    assert expected_top <= names
    block = re.compile(r"^(visual|text)\.blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
    assert all(block.match(n) for n in names - expected_top), sorted(names - expected_top)
    assert len(names - expected_top) == 12 * (ENC.vision.depth + ENC.text.depth)


def test_loss_equals_open_clip_cliploss():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(1 / 0.07)
    assert torch.allclose(tdist.contrastive_loss(img, txt, scale), ClipLoss()(img, txt, scale), atol=1e-6)


def test_lr_schedule_in_samples():
    st = Stage(name="s", samples=1000, global_batch=100, image_size=32, text_len=16,
               optimizer=OptimizerSpec(lr=1e-3), schedule=ScheduleSpec(warmup_samples=200, min_lr=1e-5))
    assert st.warmup_steps == 2 and st.steps == 10
    lrs = [lr_at(st, s) for s in range(st.steps)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    # cosine midpoint between step 2 (peak) and step 10 (min_lr)
    assert lrs[6] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5)))


def test_optimizer_skips_fixed_pos_embed_and_decays_only_matrices():
    m = _model()
    st = Stage(name="s", samples=10, global_batch=2, image_size=32, text_len=8, optimizer=OptimizerSpec(lr=1e-3))
    opt = build_optimizer(m, st)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    plain = {id(p) for p in opt.param_groups[1]["params"]}
    assert id(m.visual.pos_embed) not in decayed | plain
    assert id(m.logit_scale) in plain and id(m.visual.fc_norm.weight) in plain
    assert id(m.image_proj.weight) in decayed
    assert np.isclose(opt.param_groups[0]["weight_decay"], 0.2)
