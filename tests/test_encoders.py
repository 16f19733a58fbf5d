"""The registry's shapes equal the ones open_clip ships in its model configs."""
import json
from importlib import resources

import pytest

from clipa import encoders

OC = {"S/16": "ViT-S-16", "B/16": "ViT-B-16", "L/16": "ViT-L-16", "L/14": "ViT-L-14",
      "H/14": "ViT-H-14", "g/14": "ViT-g-14", "bigG/14": "ViT-bigG-14"}


@pytest.mark.parametrize("name", list(OC))
def test_matches_open_clip_config(name):
    pytest.importorskip("open_clip")
    cfg = json.loads((resources.files("open_clip") / "model_configs" / f"{OC[name]}.json").read_text())
    e = encoders.get(name)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    assert e.embed_dim == cfg["embed_dim"]
    assert (e.vision.width, e.vision.depth, e.vision.patch) == (v["width"], v["layers"], v["patch_size"])
    assert e.vision.heads == v["width"] // v.get("head_width", 64)
    assert e.vision.mlp_dim == round(v["width"] * v.get("mlp_ratio", 4.0))
    assert (e.text.width, e.text.depth, e.text.heads) == (t["width"], t["layers"], t["heads"])


def test_alias_and_unknown():
    assert encoders.get("G/14") is encoders.get("bigG/14")
    with pytest.raises(Exception, match="known: S/16"):
        encoders.get("X/1")
