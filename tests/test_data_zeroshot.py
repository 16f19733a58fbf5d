"""Zero-shot evaluation data: folder layout, class-name formats, templates, errors; demo generator."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from clipa.backends.data import decode
from clipa.backends.data.demo_data import SHAPES, generate, main as demo_main
from clipa.backends.data.tokenizer import get as get_tokenizer
from clipa.backends.data.webdataset_io import expand_shards, index_shard
from clipa.backends.data.zeroshot import class_embeddings, load_zeroshot, top1
from clipa.errors import UserError


def _val(tmp_path, classes=("n01", "n02", "n03"), per=3):
    for c in classes:
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(per):
            Image.new("RGB", (40, 30), (10 * i, 50, 90)).save(tmp_path / "val" / c / f"{i}.jpg")
    return tmp_path / "val"


def test_wnid_tab_names_templates_and_batches(tmp_path):
    val = _val(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("n01\tgoldfish\nn02\tgreat white shark\nn03\ttiger shark\n")
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of a {}.\na drawing of a {}.\n")
    (val / "n02" / "broken.jpg").write_bytes(b"not an image")
    zs = load_zeroshot(val, names, tpl)
    assert zs.classnames == ["goldfish", "great white shark", "tiger shark"] and zs.n_images == 10
    prompts = zs.prompts(get_tokenizer(), 12)
    assert prompts.shape == (6, 12)
    np.testing.assert_array_equal(prompts[3], get_tokenizer()(["a drawing of a great white shark."], 12)[0])
    batches = list(zs.image_batches(24, 4))
    labels = np.concatenate([b[1] for b in batches])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and zs.skipped == 1
    assert batches[0][0].shape == (4, 3, 24, 24) and batches[0][0].dtype == np.float32
    # Split over 2 ranks: each image scored once in all, each rank reading only its own files.
    shards = []
    for r in range(2):
        shards.append(list(zs.image_batches(24, 4, rank=r, world=2)))
        shards[-1].append(zs.skipped)
    assert sorted(np.concatenate([b[1] for s in shards for b in s[:-1]]).tolist()) == labels.tolist()
    assert shards[0][-1] == 0 and shards[1][-1] == 1  # the broken file (7th of 10) is in rank 1's run 5-8
    np.testing.assert_array_equal(shards[0][0][0], batches[0][0])  # files 0-3 decode: rank 0's first batch


def test_plain_names_default_templates_and_user_errors(tmp_path):
    val = _val(tmp_path, ("dog", "sea_lion"), 1)
    zs = load_zeroshot(val)
    assert zs.classnames == ["dog", "sea lion"] and zs.templates == ["a photo of a {}."]
    with pytest.raises(UserError, match="nope"):
        load_zeroshot(tmp_path / "nope")
    bad = tmp_path / "names.txt"
    bad.write_text("dog\n")
    with pytest.raises(UserError, match="1 class names for 2 folders"):
        load_zeroshot(val, bad)
    bad.write_text("n09\tdog\nn10\tsea lion\n")
    with pytest.raises(UserError, match="n09"):
        load_zeroshot(val, bad)
    with pytest.raises(UserError, match="missing.txt"):
        load_zeroshot(val, None, tmp_path / "missing.txt")
    bad.write_bytes(b"\x1f\x8b\x08 compressed")  # a binary file given for the class names
    with pytest.raises(UserError, match=r"names.txt: not a class-name file: not UTF-8 text \(byte 1\)"):
        load_zeroshot(val, bad)


def test_image_suffixes_in_any_case_and_other_files_left_out(tmp_path):
    val = _val(tmp_path, ("a", "b"), 1)
    for name in ("x.JPEG", "y.Webp", "z.Png"):  # ImageNet's val files end in .JPEG; cameras write .JPG
        shutil.copy(next((val / "a").iterdir()), val / "b" / name)
    (val / "b" / "notes.txt").write_text("not an image")
    assert np.bincount(load_zeroshot(val).labels).tolist() == [1, 4]


def test_val_images_takes_every_class_share_of_a_fixed_subset(tmp_path):
    val = _val(tmp_path, ("a", "b", "c", "d"), 10)
    whole = load_zeroshot(val)
    sub = load_zeroshot(val, limit=20)
    assert sub.n_images == len(sub.files) == 20 and whole.n_images == 40
    assert set(sub.files) <= set(whole.files) and len(set(sub.files)) == 20
    assert np.bincount(sub.labels).tolist() == [5, 5, 5, 5]
    assert load_zeroshot(val, limit=20).files == sub.files  # the same subset every time
    assert load_zeroshot(val, limit=400).files == whole.files


def test_top1_with_prompt_ensembling():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    prompts = np.repeat(centres, 3, axis=0) + 0.05 * rng.normal(size=(12, 16))
    cls = class_embeddings(prompts, 4, 3)
    labels = np.array([0, 1, 2, 3, 2])
    assert top1(centres[labels], cls, labels) == 1.0
    assert top1(centres[labels], cls, np.array([1, 0, 2, 3, 2])) == 0.6


def test_open_clip_normalisation_constants():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    np.testing.assert_allclose(decode.CLIP_MEAN, OPENAI_DATASET_MEAN)
    np.testing.assert_allclose(decode.CLIP_STD, OPENAI_DATASET_STD)


def test_draft_decode_is_close_to_full_decode(tmp_path):
    import io
    y, x = np.mgrid[0:480, 0:640]
    a = np.stack([x / 640 * 255, y / 480 * 255, (x + y) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=92)
    fast = decode.decode_eval(buf.getvalue(), 64, draft=True).astype(float)
    full = decode.decode_eval(buf.getvalue(), 64, draft=False).astype(float)
    assert fast.shape == (64, 64, 3) and np.abs(fast - full).mean() < 4.0  # of 255


def test_demo_data_deterministic_loadable_and_cli(tmp_path):
    a = generate(tmp_path / "a", n_train=30, n_val=20, image_size=32, seed=5)
    b = generate(tmp_path / "b", n_train=30, n_val=20, image_size=32, seed=5)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    shards_a, shards_b = expand_shards(a["train"]), expand_shards(b["train"])
    assert [digest(p) for p in shards_a] == [digest(p) for p in shards_b]
    assert len(index_shard(shards_a[0]).entries) == a["train_samples"] == 30
    zs = load_zeroshot(a["val"], a["classnames"], a["templates"])
    assert zs.classnames == sorted(SHAPES) and zs.n_images == 20 and len(zs.templates) >= 3
    # the caption names the class of its image (the shape is the class)
    import json
    from clipa.backends.data.webdataset_io import read_shard_samples
    samples, _ = read_shard_samples(shards_a[0])
    for s in samples:
        assert json.loads(s["json"])["shape"] in s["txt"].decode()
    c = generate(tmp_path / "c", n_train=30, n_val=20, image_size=32, seed=6)
    assert digest(expand_shards(c["train"])[0]) != digest(shards_a[0])
    assert demo_main([str(tmp_path / "cli"), "--train", "12", "--val", "10", "--size", "24"]) == 0
    assert (tmp_path / "cli" / "train" / "shard-00000.tar").is_file()
