"""The registries (clipa/registry.py): one-line errors, and every registered reduction trained by both
backends (timm's contract test over every registered model)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from clipa import datasets, encoders, reductions, recipe
from clipa.errors import UserError
from clipa.planner import search_space as ss
from clipa.registry import Registry

B, SIZE, TEXT_LEN = 8, 32, 12
ENC = encoders.get("test")


def test_duplicate_and_unknown_names_are_one_line_errors():
    reg = Registry[datasets.Dataset]("dataset")
    reg.register(datasets.Dataset("a", "first"))
    with pytest.raises(ValueError, match=r"^dataset 'a' registered twice; known: a$"):
        reg.register(datasets.Dataset("a", "again"))
    with pytest.raises(UserError, match=r"^unknown dataset 'b'; known: a$"):
        reg.get("b")


def test_recipe_search_space_and_help_read_the_registries():
    assert ss.IMAGE_REDUCTIONS == reductions.IMAGE.names() and ss.TEXT_REDUCTIONS == reductions.TEXT.names()
    fields = recipe.ImageReductionSpec.model_fields
    assert fields["kind"].description == " | ".join(reductions.IMAGE.names())
    assert recipe.DatasetSpec.model_fields["name"].description == " | ".join(datasets.DATASETS.names())
    with pytest.raises(ValueError, match="unknown image reduction 'crop'; known: resize, block_mask"):
        recipe.ImageReductionSpec(kind="crop")
    masks = {p.image_reduction for p in ss.points(("L/16",))}
    assert masks == set(reductions.IMAGE.names())


def test_every_finetune_schedule_and_plannable_dataset_make_a_recipe_that_maps_back():
    base = next(p for p in ss.points(("L/14",)) if p.image_reduction == "resize" and p.side == 8)
    for ft in ss.FINETUNES:
        for ds in datasets.plannable():
            p = dataclasses.replace(base, finetune=ft.name)
            rec = ss.build_recipe(p, 1.28e9, dataset=ds, hardware="a100x8", name="x", workers=11)
            assert [(s.image_size, s.samples, s.image_reduction.mask_ratio, s.text_len) for s in rec.stages[1:]] \
                == [(s.image_size, s.samples, s.mask_ratio, s.text_len) for s in ft.stages]
            assert rec.dataset.name == ds and ss.point_from_recipe(rec) == p


def _stage(image: str, text: str) -> recipe.Stage:
    ratio = 0.5 if reductions.IMAGE.get(image).masks else 0.0
    return recipe.Stage(name="s", samples=4 * B, global_batch=B, image_size=SIZE, text_len=TEXT_LEN,
                        image_reduction={"kind": image, "mask_ratio": ratio}, text_reduction=text,
                        optimizer={"lr": 1e-3})


# Every image reduction (with truncated text) and every text reduction (with resized images).
CASES = ([(r.name, "truncate") for r in reductions.IMAGE]
         + [("resize", t.name) for t in reductions.TEXT if t.name != "truncate"])


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    from clipa.backends.data import demo_data
    from clipa.backends.data.pipeline import train_batches

    data = demo_data.generate(tmp_path_factory.mktemp("data"), 2 * B, 1, SIZE, 0)
    ds = recipe.DatasetSpec(name="custom", train=str(data["train"]), workers=0)
    out = {}
    for image, text in CASES:
        st = _stage(image, text)
        batch = next(iter(train_batches(ds, st, ENC, batch_size=B)))
        k = st.image_tokens(ENC)
        assert batch["image"].shape == (B, 3, SIZE, SIZE) and batch["text"].shape == (B, TEXT_LEN)
        assert ("keep" in batch) == reductions.IMAGE.get(image).masks
        if "keep" in batch:
            assert batch["keep"].shape == (B, k) and k == ENC.vision.tokens(SIZE) // 2
        out[image, text] = (st, batch)
    return out


@pytest.mark.parametrize("image,text", CASES)
def test_torch_trains_every_reduction(batches, image, text):
    import torch

    from clipa.backends.torch.model import CLIPA
    from clipa.backends.torch.trainer import build_optimizer, train_step

    torch.set_num_threads(1)
    st, batch = batches[image, text]
    torch.manual_seed(0)
    model = CLIPA(ENC, SIZE)
    opt = build_optimizer(model, st)
    tb = {k: torch.from_numpy(v).long() if k != "image" else torch.from_numpy(v) for k, v in batch.items()}
    losses = [float(train_step(model, opt, tb, 1e-3)) for _ in range(2)]
    img, txt, _ = model(*(tb[k] for k in ("image", "text", "keep") if k in tb))
    assert img.shape == txt.shape == (B, ENC.embed_dim)
    assert all(math.isfinite(x) for x in losses) and torch.isfinite(img).all() and torch.isfinite(txt).all()


@pytest.fixture(scope="module")
def jax_setup():
    """The JAX model, optimizer, mesh, initial weights and a step compiled once per batch layout."""
    jax = pytest.importorskip("jax")
    from clipa.backends.jax import model as M, sharding as shd, trainer as T

    model = M.build(ENC)
    params = jax.device_get(M.init_params(model, jax.random.key(0), SIZE, TEXT_LEN))
    tx = T.optimizer(recipe.OptimizerSpec(lr=1e-3), lambda step: 1e-3)
    mesh = shd.make_mesh()
    steps = {}

    def step_for(keys):
        if keys not in steps:
            steps[keys] = T.make_step(model, tx, mesh, T.place_state(T.init_state(params, tx), mesh), list(keys))
        return steps[keys]

    return model, tx, params, mesh, step_for


@pytest.mark.parametrize("image,text", CASES)
def test_jax_trains_every_reduction(batches, jax_setup, image, text):
    import jax

    from jax_steps import two_steps

    model, tx, params, mesh, step_for = jax_setup
    batch = batches[image, text][1]
    state, losses = two_steps(model, tx, params, batch, mesh, step_for(tuple(batch)))
    img, txt, _ = model.apply({"params": jax.device_get(state["params"])}, batch["image"], batch["text"],
                              batch.get("keep"))
    assert img.shape == txt.shape == (B, ENC.embed_dim)
    assert all(math.isfinite(x) for x in losses) and np.isfinite(img).all() and np.isfinite(txt).all()
