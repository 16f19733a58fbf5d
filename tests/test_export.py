"""clipa-export: a trained tiny run loaded by OpenCLIP itself (local-dir:) gives clipa's embeddings, and its
zero-shot predictions on the held-out split, computed in a process that never imports clipa with
open_clip's own tokenizer and transforms, equal clipa's."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import open_clip
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_torch_run import ENV, _recipe, _run, data  # noqa: F401  (data: the shared shard fixture)
from tiny_run import tiny

from clipa import recipe as recipe_mod
from clipa import rundir
from clipa.backends.data import tokenizer, zeroshot
from clipa.backends.torch.model import CLIPA


@pytest.fixture(scope="module", params=["torch", "jax"])
def trained(request, tmp_path_factory, data):  # noqa: F811
    """A finished two-stage run (sin-cos 32 px, then learned 40 px with masking) with OpenCLIP's class token,
    by either backend: a TPU run must end in a model OpenCLIP loads as much as a GPU run."""
    if request.param == "jax":
        pytest.importorskip("jax")
    tmp = tmp_path_factory.mktemp("export")
    path = _recipe(tmp, data, name="oc")
    rec = yaml.safe_load(path.read_text())
    rec["encoder"]["class_token"] = True
    path.write_text(yaml.safe_dump(rec))
    res = _run(path, tmp / "run", "--backend", request.param)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp / "exported"
    res = subprocess.run([sys.executable, "-m", "clipa.cli.export", str(tmp / "run"), str(out)], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp / "run", out


def _clipa_model(run_dir):
    rec = recipe_mod.load(run_dir / rundir.RECIPE)
    last = rec.stages[-1]
    model = CLIPA(rec.encoder.spec, rec.stages[0].image_size)
    model.set_stage(last.image_size, last.pos_embed)
    model.load_state_dict(load_file(str(run_dir / rundir.CHECKPOINTS / "final.safetensors")))
    return model.eval(), rec


def test_openclip_model_gives_clipa_embeddings(trained):
    run_dir, out = trained
    model, rec = _clipa_model(run_dir)
    oc, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")  # strict load of every tensor
    oc.eval()
    zs = zeroshot.load_zeroshot(rec.dataset.val, rec.dataset.classnames, rec.dataset.templates)
    images = torch.as_tensor(np.concatenate([x for x, _ in zs.image_batches(rec.stages[-1].image_size, 16)]))
    text = torch.as_tensor(zs.prompts(tokenizer.get(), rec.stages[-1].text_len)).long()
    with torch.no_grad():
        img_diff = (oc.encode_image(images) - model.encode_image(images)).abs().max().item()
        txt_diff = (oc.encode_text(text) - model.encode_text(text)).abs().max().item()
        assert oc.logit_scale.exp().item() == pytest.approx(min(100.0, model.logit_scale.exp().item()), rel=1e-6)
    assert images.shape[0] == zs.n_images and text.shape[0] == len(zs.classnames) * len(zs.templates)
    assert img_diff <= 1e-5 and txt_diff <= 1e-5, (img_diff, txt_diff)


# Runs in a fresh interpreter: OpenCLIP's tokenizer, transforms and model only (CLIP's prompt ensemble).
_ZERO_SHOT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import open_clip, torch
    from PIL import Image
    out, val, classnames, templates = sys.argv[1:]
    model, _, preprocess = open_clip.create_model_and_transforms('local-dir:' + out)
    tok = open_clip.get_tokenizer('local-dir:' + out)
    model.eval()
    names = Path(classnames).read_text().split(chr(10))
    names = [n for n in names if n.strip()]
    temps = [t for t in Path(templates).read_text().split(chr(10)) if t.strip()]
    folders = sorted(p for p in Path(val).iterdir() if p.is_dir())
    with torch.no_grad():
        classes = []
        for n in names:
            e = model.encode_text(tok([t.replace('{}', n) for t in temps]), normalize=True).mean(dim=0)
            classes.append(e / e.norm())
        classes = torch.stack(classes)
        sims, labels = [], []
        for y, folder in enumerate(folders):
            for f in sorted(folder.iterdir()):
                img = preprocess(Image.open(f)).unsqueeze(0)
                sims.append((model.encode_image(img, normalize=True) @ classes.T)[0].tolist())
                labels.append(y)
    preds = [max(range(len(s)), key=s.__getitem__) for s in sims]
    top1 = 100.0 * sum(p == y for p, y in zip(preds, labels)) / len(labels)
    print(json.dumps({"top1": top1, "preds": preds, "sims": sims,
                      "clipa_imported": any(m.split('.')[0] == 'clipa' for m in sys.modules)}))
""")


def test_openclip_zero_shot_equals_clipa_in_a_process_without_clipa(trained):
    run_dir, out = trained
    rec = recipe_mod.load(run_dir / rundir.RECIPE)
    ds = rec.dataset
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", _ZERO_SHOT, str(out), ds.val, ds.classnames, ds.templates],
                         capture_output=True, text=True, env=env, timeout=300, cwd=out)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["clipa_imported"] is False
    # clipa's own predictions, with its own pipeline (the run's final evaluation gave achieved.json's top-1)
    model, _ = _clipa_model(run_dir)
    zs = zeroshot.load_zeroshot(ds.val, ds.classnames, ds.templates)
    last = rec.stages[-1]
    with torch.no_grad():
        prompts = torch.as_tensor(zs.prompts(tokenizer.get(), last.text_len)).long()
        emb = model.encode_text(prompts).numpy()
        classes = zeroshot.class_embeddings(emb, len(zs.classnames), len(zs.templates))
        img = np.concatenate([model.encode_image(torch.as_tensor(x)).numpy() for x, _ in
                              zs.image_batches(last.image_size, 16)])
    sims = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ classes.T  # cosine similarity, image x class
    # The same numbers from OpenCLIP's tokenizer, transforms and model, not only the same argmax
    assert np.abs(np.array(got["sims"]) - sims).max() <= 1e-5
    assert got["preds"] == sims.argmax(axis=1).tolist()
    # the similarities differ between images by far more than the tolerance: the comparison tells them apart
    assert np.ptp(sims, axis=0).min() > 100 * 1e-5
    assert got["top1"] == pytest.approx(rundir.read_achieved(run_dir).top1, abs=1e-9)


def test_export_from_a_url_run_directory_equals_the_local_export(trained, tmp_path):
    """A TPU pod's run directory is a gs:// URL; file:// goes through the same fsspec layer (clipa/fs.py)."""
    run_dir, local = trained
    res = _export(f"file://{run_dir}", tmp_path / "from-url")
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = load_file(str(local / "open_clip_model.safetensors")), load_file(str(tmp_path / "from-url" /
                                                                                "open_clip_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads((tmp_path / "from-url" / "open_clip_config.json").read_text())
    assert cfg["clipa"]["run_dir"] == f"file://{run_dir}"
    assert cfg["model_cfg"] == json.loads((local / "open_clip_config.json").read_text())["model_cfg"]


def _untrained_run(tmp_path, class_token: bool, final: bool = True):
    rec = recipe_mod.from_dict(tiny(stages=1, encoder={"name": "test", "class_token": class_token}))
    run_dir = tmp_path / "run"
    recipe_mod.dump(rec, run_dir / rundir.RECIPE)
    if final:
        (run_dir / rundir.CHECKPOINTS).mkdir(parents=True)
        weights = {k: v.contiguous() for k, v in CLIPA(rec.encoder.spec, 32).state_dict().items()}
        save_file(weights, str(run_dir / rundir.CHECKPOINTS / "final.safetensors"))
    return run_dir


def _export(run_dir, out):
    return subprocess.run([sys.executable, "-m", "clipa.cli.export", str(run_dir), str(out)], capture_output=True,
                          text=True, env=ENV, timeout=120)


@pytest.mark.parametrize("class_token,final,words", [(False, True, "class token"), (True, False, "has not finished")])
def test_export_refuses_in_one_line(tmp_path, class_token, final, words):
    res = _export(_untrained_run(tmp_path, class_token, final), tmp_path / "out")
    assert res.returncode == 2
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()
