"""The FLOPs model against counts taken from the real modules (timm image tower, open_clip text tower).

FlopCounterMode counts matmuls, convolutions and SDPA only, as clipa.costmodels.flops does. Models
are built on the meta device: the counter needs shapes, not values, so B/16 and H/14 cost nothing;
one small case runs on real CPU tensors to show meta counts equal real ones. Attention runs on the
math SDPA kernel: the counter knows only some fused kernels (torch 2.14's CPU flash kernel is not
among them), and which one a device dispatches to is not what these tests check.
"""
import pytest

torch = pytest.importorskip("torch")
import reference_modules as ref  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from clipa import encoders, recipe  # noqa: E402
from clipa.costmodels import flops  # noqa: E402

BATCH = 2


def _count(fn) -> float:
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / BATCH


def _vision_count(enc, image_size, mask_ratio=0.0, backward=False, checkpoint=False, device="meta"):
    with torch.device(device):
        m = ref.vit(enc, image_size, head=True, mask_ratio=mask_ratio)
        x = torch.randn(BATCH, 3, image_size, image_size)
    m.train(mask_ratio > 0)                 # timm drops patches only in train mode
    m.set_grad_checkpointing(checkpoint)
    return _count(lambda: m(x).sum().backward() if backward else m(x))


def _text_count(enc, text_len, backward=False, checkpoint=False, device="meta"):
    with torch.device(device):
        m = ref.text(enc, text_len)
        ids = torch.randint(1, 100, (BATCH, text_len))
    m.set_grad_checkpointing(checkpoint)
    return _count(lambda: m(ids).sum().backward() if backward else m(ids))


def _close(a, b, rel=0.02):
    assert a == pytest.approx(b, rel=rel), f"model {a:.4e} vs counted {b:.4e} ({a / b - 1:+.2%})"


@pytest.mark.parametrize("name,image_size,mask", [
    ("B/16", 112, 0.0), ("B/16", 224, 0.0), ("B/16", 224, 0.3), ("B/16", 64, 0.0),
    ("L/14", 84, 0.0), ("H/14", 84, 0.0), ("H/14", 336, 0.4), ("S/16", 160, 0.5),
])
def test_vision_forward_matches_timm(name, image_size, mask):
    enc = encoders.get(name)
    full = enc.vision.tokens(image_size)
    kept = max(1, int(full * (1 - mask)))   # timm PatchDropout's own rule
    _close(flops.vision_forward_flops(enc, kept, patch_tokens=full), _vision_count(enc, image_size, mask))


@pytest.mark.parametrize("name,text_len", [("B/16", 8), ("B/16", 32), ("B/16", 77), ("H/14", 8), ("L/16", 16)])
def test_text_forward_matches_open_clip(name, text_len):
    enc = encoders.get(name)
    _close(flops.text_forward_flops(enc, text_len), _text_count(enc, text_len))


@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("name,image_size,mask,text_len", [("B/16", 224, 0.0, 32), ("S/16", 224, 0.3, 8)])
def test_train_flops_match_forward_backward(name, image_size, mask, text_len, checkpoint):
    """fwd+bwd (and recomputation under activation checkpointing) as the autograd engine runs it."""
    enc = encoders.get(name)
    full = enc.vision.tokens(image_size)
    kept = max(1, int(full * (1 - mask)))
    counted = (_vision_count(enc, image_size, mask, backward=True, checkpoint=checkpoint)
               + _text_count(enc, text_len, backward=True, checkpoint=checkpoint))
    model = flops.train_flops_per_sample(enc, kept, text_len, recompute=checkpoint, patch_tokens=full)
    _close(model, counted)


def test_recompute_costs_close_to_one_more_forward():
    enc = encoders.get("B/16")
    fwd = flops.forward_flops(enc, 196, 32)
    ratio = flops.train_flops_per_sample(enc, 196, 32, recompute=True) / fwd
    assert 3.5 < ratio < 4.0
    assert flops.train_flops_per_sample(enc, 196, 32) == pytest.approx(3 * fwd)


def test_meta_counts_equal_real_counts():
    enc = encoders.get("test")
    assert _vision_count(enc, 32, device="cpu") == _vision_count(enc, 32, device="meta")
    assert _text_count(enc, 16, device="cpu") == _text_count(enc, 16, device="meta")


def test_contrastive_logits_matmul():
    enc = encoders.get("B/16")
    b = 64
    img, txt = torch.randn(b, enc.embed_dim, device="meta"), torch.randn(b, enc.embed_dim, device="meta")
    with FlopCounterMode(display=False) as fc:
        img @ txt.T
    assert flops.contrastive_flops_per_sample(enc, b) == fc.get_total_flops() / b
    base = flops.forward_flops(enc, 49, 8)
    assert flops.forward_flops(enc, 49, 8, global_batch=b) == base + fc.get_total_flops() / b


def test_flops_grow_with_tokens_and_reject_empty_inputs():
    enc = encoders.get("L/16")
    assert flops.vision_forward_flops(enc, 16) < flops.vision_forward_flops(enc, 36) < flops.vision_forward_flops(enc, 196)
    assert flops.text_forward_flops(enc, 8) < flops.text_forward_flops(enc, 32)
    with pytest.raises(ValueError):
        flops.vision_forward_flops(enc, 0)
    with pytest.raises(ValueError):
        flops.text_forward_flops(enc, 0)


@pytest.mark.parametrize("checkpoint,class_token,size,kept", [(False, False, 224, 137), (True, False, 224, 137),
                                                                 (False, True, 64, 8), (True, True, 64, 8)])
def test_train_flops_match_clipa_torch_model(checkpoint, class_token, size, kept):
    """The backend's own model, masked (keep 137 of 196 tokens; with OpenCLIP's class token 8 of 16, where
    the token is 1 in 9 of the blocks' sequence) and with text 32, fwd+bwd."""
    model_mod = pytest.importorskip("clipa.backends.torch.model")
    enc = recipe.EncoderSpec(name="B/16", class_token=class_token).spec
    with torch.device("meta"):
        m = model_mod.CLIPA(enc, size)
        image = torch.randn(BATCH, 3, size, size)
        text = torch.randint(1, 100, (BATCH, 32))
        keep = torch.arange(kept).expand(BATCH, -1)
    m.train()
    m.set_grad_checkpointing(checkpoint)

    def step():
        img, txt, scale = m(image, text, keep)
        (scale * img @ txt.T).sum().backward()
    counted = _count(step)
    model = flops.train_flops_per_sample(enc, kept, 32, recompute=checkpoint, patch_tokens=(size // 16) ** 2,
                                         global_batch=BATCH)
    _close(model, counted)
