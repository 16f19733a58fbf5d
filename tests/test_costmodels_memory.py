"""The memory model against real modules: exact parameter counts, and activation bytes measured as
the tensors autograd saves for backward (torch.autograd.graph.saved_tensors_hooks, CPU autocast)."""
import pytest

torch = pytest.importorskip("torch")
import reference_modules as ref  # noqa: E402

from clipa import encoders, recipe  # noqa: E402
from clipa.costmodels import hardware, memory  # noqa: E402
from clipa.errors import UserError  # noqa: E402


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["test", "B/16", "L/14", "H/14", "bigG/14"])
def test_param_count_matches_real_modules(name):
    enc = encoders.get(name)
    with torch.device("meta"):
        vit = ref.vit(enc, 224, pos_embed="none")                       # sin-cos: no position parameter
        vit_learned = ref.vit(enc, 224)
        proj = torch.nn.Linear(enc.vision.width, enc.embed_dim, bias=False)   # backends/README: no bias
        text = ref.text(enc)
    assert memory.vision_params(enc) == _n(vit) + _n(proj)
    assert memory.vision_params(enc, image_size=224) == _n(vit_learned) + _n(proj)
    assert memory.text_params(enc) == _n(text)
    assert memory.param_count(enc) == _n(vit) + _n(proj) + _n(text) + 1   # + logit scale


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd saves for backward while ``fn`` runs."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _per_sample(make_input, model, precision):
    # Difference of two batch sizes: weights (and autocast's weight casts) cancel out.
    def run(b):
        x = make_input(b)

        def f():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                model(x)
        return _saved_bytes(f)
    return (run(4) - run(2)) / 2


@pytest.mark.parametrize("name,image_size,precision", [("B/16", 112, "bf16"), ("B/16", 112, "fp32"), ("demo", 64, "bf16")])
def test_vision_activations_match_saved_tensors(name, image_size, precision):
    torch.set_num_threads(1)
    enc = encoders.get(name)
    # A position embedding is added as in clipa's model (fp32 sin-cos buffer or learned parameter):
    # that fp32 add is what keeps the residual stream in fp32 under autocast.
    vit = ref.vit(enc, image_size)
    measured = _per_sample(lambda b: torch.randn(b, 3, image_size, image_size), vit.forward_features, precision)
    model = memory.vision_activation_bytes(enc, enc.vision.tokens(image_size), grad_checkpointing=False,
                                           precision=precision)
    assert model == pytest.approx(measured, rel=0.05)

    # Checkpointing: forward keeps only the block inputs; backward then recomputes one block at a time,
    # so the peak is what forward kept plus one block's activations (measured above, / depth).
    vit.set_grad_checkpointing(True)
    kept = _per_sample(lambda b: torch.randn(b, 3, image_size, image_size), vit.forward_features, precision)
    model_ckpt = memory.vision_activation_bytes(enc, enc.vision.tokens(image_size), grad_checkpointing=True,
                                                precision=precision)
    assert model_ckpt == pytest.approx(kept + measured / enc.vision.depth, rel=0.10)
    assert model_ckpt < model / 2


def test_text_activations_match_saved_tensors():
    torch.set_num_threads(1)
    enc = encoders.get("demo")
    text = ref.text(enc, context_length=32)
    measured = _per_sample(lambda b: torch.randint(1, 100, (b, 32)), text, "bf16")
    model = memory.text_activation_bytes(enc, 32, grad_checkpointing=False)
    # Outside the blocks the tower also saves its final LayerNorm input and the pooled row (~4% here).
    assert model == pytest.approx(measured, rel=0.08)


def test_breakdown_states_and_scaling():
    enc = encoders.get("L/16")
    n = memory.param_count(enc)
    m = memory.per_device_memory(enc, 64, 36, 8, grad_checkpointing=False)
    assert (m.params, m.grads, m.optimizer) == (4 * n, 4 * n, 8 * n)
    assert m.total == pytest.approx(m.params + m.grads + m.optimizer + m.activations)
    z = memory.per_device_memory(enc, 64, 36, 8, grad_checkpointing=False, zero_shards=8)
    assert z.optimizer == pytest.approx(n)
    ck = memory.per_device_memory(enc, 64, 36, 8, grad_checkpointing=True)
    assert ck.activations < m.activations / 3
    big = memory.per_device_memory(enc, 128, 36, 8, grad_checkpointing=False)
    assert big.activations == pytest.approx(2 * m.activations, rel=0.01)
    fp32 = memory.per_device_memory(enc, 64, 36, 8, grad_checkpointing=False, precision="fp32")
    assert fp32.activations > m.activations
    with pytest.raises(UserError, match="precision"):
        memory.per_device_memory(enc, 64, 36, 8, grad_checkpointing=False, precision="fp8")


def test_fits_and_max_batch():
    enc = encoders.get("H/14")
    a100 = hardware.get("a100x8")
    b = memory.max_per_device_batch(enc, 256, 32, a100, grad_checkpointing=False)
    assert b > 0
    assert memory.fits(enc, b, 256, 32, a100, grad_checkpointing=False)
    assert not memory.fits(enc, b + 1, 256, 32, a100, grad_checkpointing=False)
    # Checkpointing and fewer tokens both let a larger batch fit.
    assert memory.max_per_device_batch(enc, 256, 32, a100, grad_checkpointing=True) > b
    assert memory.max_per_device_batch(enc, 36, 8, a100, grad_checkpointing=False) > b
    # bigG/14's model state (16 bytes x 2.5B params) exceeds a 40 GB device without sharding.
    assert memory.max_per_device_batch(encoders.get("bigG/14"), 36, 8, hardware.get("a100-40gbx8"),
                                       grad_checkpointing=True) == 0


@pytest.mark.parametrize("name,class_token", [("test", False), ("test", True), ("B/16", False), ("H/14", False)])
def test_param_count_matches_clipa_torch_model(name, class_token):
    """The backend's own model (sin-cos stage, then a learned-position stage at 224 px)."""
    model_mod = pytest.importorskip("clipa.backends.torch.model")
    enc = recipe.EncoderSpec(name=name, class_token=class_token).spec
    with torch.device("meta"):
        m = model_mod.CLIPA(enc, 224)
    assert memory.param_count(enc) == _n(m)
    m.set_stage(224, "learned")
    assert memory.param_count(enc, image_size=224) == _n(m)
