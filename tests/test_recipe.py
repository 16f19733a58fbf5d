import copy
import subprocess
import sys

import pytest
import yaml

from clipa import encoders, recipe
from clipa.errors import UserError, load_yaml

BASE = {
    "name": "t",
    "encoder": {"name": "L/16"},
    "dataset": {"name": "laion-400m"},
    "hardware": {"name": "a100x8"},
    "stages": [
        {"name": "pretrain", "samples": 2_560_000_000, "global_batch": 32768, "image_size": 96,
         "text_len": 8, "text_reduction": "syntax", "optimizer": {"lr": 1.024e-3}},
        {"name": "finetune", "samples": 131_072_000, "global_batch": 7168, "image_size": 224,
         "text_len": 32, "optimizer": {"lr": 2.24e-5}, "pos_embed": "learned"},
    ],
}


def test_valid_recipe_roundtrips(tmp_path):
    r = recipe.from_dict(copy.deepcopy(BASE))
    enc = encoders.get("L/16")
    assert r.stages[0].image_tokens(enc) == 36  # 96/16 = 6 -> 6x6
    assert r.stages[1].image_tokens(enc) == 196
    p = recipe.dump(r, tmp_path / "r.yaml")
    assert recipe.load(p) == r


def test_a_recipe_written_with_gpu_hours_loads_and_is_written_back_with_device_hours(tmp_path):
    """clipa 0.1 wrote predictions.gpu_hours (and per stage, and in the provenance): such files still load."""
    d = copy.deepcopy(BASE)
    stage = {"name": "pretrain", "image_size": 96, "image_tokens": 36, "text_len": 8, "samples": 2_560_000_000,
             "train_flops_per_sample": 1e10, "train_flops": 2.56e19, "gpu_hours": 100.0, "wall_hours": 12.5}
    d["predictions"] = {"predicted_top1": 60.0, "predicted_top1_interval": [58.0, 62.0], "gpu_hours": 100.0,
                        "wall_hours": 12.5, "hardware": "a100x8", "cost_model_version": "old", "stages": [stage]}
    d["provenance"] = {"command": "clipa-plan --gpu-hours 100", "clipa_version": "0.1.0", "created": "2026-01-01",
                       "gpu_hours": 100.0}
    r = recipe.from_dict(d)
    assert r.predictions.device_hours == r.predictions.stages[0].device_hours == r.provenance.device_hours == 100.0
    text = recipe.to_yaml(r)
    assert "device_hours" in text and "gpu_hours" not in text
    assert recipe.load(recipe.dump(r, tmp_path / "r.yaml")) == r


def test_mask_reduces_tokens():
    d = copy.deepcopy(BASE)
    d["stages"][1]["image_reduction"] = {"kind": "random_mask", "mask_ratio": 0.3}
    r = recipe.from_dict(d)
    assert r.stages[1].image_tokens(encoders.get("L/16")) == int(196 * 0.7)


def test_a_sample_count_may_be_written_with_an_exponent(tmp_path):
    """PyYAML reads 12.8e9 (no dot, or no exponent sign) as a string: the count is still a count."""
    text = recipe.to_yaml(recipe.from_dict(copy.deepcopy(BASE)))
    text = text.replace("samples: 2560000000", "samples: 2.56e9").replace("samples: 131072000", "samples: 131_072e3")
    assert "2.56e9" in text and "131_072e3" in text
    p = tmp_path / "r.yaml"
    p.write_text(text)
    r = recipe.load(p)
    assert [s.samples for s in r.stages] == [2_560_000_000, 131_072_000]
    p.write_text(text.replace("2.56e9", "2.5e-1"))
    with pytest.raises(UserError, match=r"stages\[0\].samples: Input should be a valid integer, got a number with a "
                                        "fractional part"):
        recipe.load(p)


@pytest.mark.parametrize("path,value,needle", [
    (("stages", 0, "text_len"), 0, "stages[0].text_len"),
    (("stages", 0, "text_reduction"), "nouns", "stages[0].text_reduction"),
    (("encoder", "name"), "Z/99", "unknown encoder 'Z/99'"),
    (("stages", 1, "samplez"), 5, "stages[1].samplez"),
    (("stages", 0, "image_size"), 8, "stages[0].image_size: 8 px must be a multiple of the patch"),
    (("stages", 0, "image_size"), 70, "stages[0].image_size: 70 px must be a multiple of the patch"),
    (("stages", 1, "image_size"), 2240, "between 16 and 1024"),
    (("stages", 0, "text_len"), 1, "stages[0].text_len"),
    (("stages", 0, "optimizer", "betas"), [0.9, 1.0], "stages[0].optimizer.betas: each beta must be in [0, 1)"),
    (("stages", 0, "optimizer", "lr"), float("nan"), "stages[0].optimizer.lr"),
    (("stages", 0, "optimizer", "lr"), float("inf"), "stages[0].optimizer.lr"),
    (("stages", 0, "augment"), {"random_resized_crop": [0.9, 0.4]}, "stages[0].augment.random_resized_crop"),
    (("train",), {"seed": -1}, "train.seed"),
    (("stages", 0, "schedule"), {"warmup_samples": 10 ** 12},
     "stages[0]: schedule.warmup_samples 1,000,000,000,000 is more than the stage's"),
    (("stages", 0, "schedule"), {"min_lr": 1.0}, "stages[0]: schedule.min_lr 1 is above optimizer.lr"),
    (("stages", 1, "global_batch"), 200_000_000, "stages[1]: global_batch 200,000,000 is more than the stage's "
     "131,072,000 samples: a stage trains whole batches, so it would train 200,000,000"),
    (("name",), "..", "name: '..' has no letter or digit"),
])
def test_bad_field_is_named(path, value, needle):
    d = copy.deepcopy(BASE)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(UserError) as e:
        recipe.from_dict(d)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,needle", [
    (b"name: \xff\xfe\n", "not a UTF-8 text file"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
])
def test_unreadable_recipe_file_is_one_line(tmp_path, content, needle):
    p = tmp_path / "bad.yaml"
    p.write_bytes(content)
    with pytest.raises(UserError) as e:
        recipe.load(p)
    assert needle in str(e.value)


@pytest.mark.parametrize("text,needle", [
    # YAML keeps the last of a key given twice without a word: the run would train with it
    ("name: x\ntrain:\n  seed: 0\n  seed: 1\n", "(line 4, column 3: key 'seed' given twice)"),
    ("name: x\ntrain:\n\tseed: 0\n", "(line 3, column 1: found character '\\t' that cannot start any token)"),
    ("name: x\n? [a]\n: 1\n", "(line 2, column 3: found unhashable key)"),
])
def test_a_recipe_that_does_not_parse_is_named_with_its_line(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match="not a valid recipe file") as e:
        recipe.load(p)
    assert needle in str(e.value)


def test_a_merge_key_still_lets_its_neighbours_override(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("d: &d {lr: 1, wd: 2}\ns: {<<: *d, lr: 3}\n")
    assert load_yaml(p, "file") == {"d": {"lr": 1, "wd": 2}, "s": {"lr": 3, "wd": 2}}
    p = tmp_path / "c.json"
    p.write_text('{"a": 1, "b": {"a": 2, "a": 3}}')
    with pytest.raises(UserError, match="key 'a' given twice"):
        load_yaml(p, "file")


def test_cli_bad_recipe_one_line_exit_2(tmp_path):
    d = copy.deepcopy(BASE)
    d["stages"][0]["global_batch"] = -1
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    out = subprocess.run([sys.executable, "-m", "clipa.cli.run", str(p)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "stages[0].global_batch" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
