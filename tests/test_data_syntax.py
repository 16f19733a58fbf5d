"""Syntax masking with real spaCy tags; the shard preparation step; the spaCy package pin."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from clipa import encoders
from clipa.backends.data import syntax_prep
from clipa.backends.data.batch_job import JobConfig, run
from clipa.backends.data.pipeline import train_batches
from clipa.backends.data.tokenizer import get as get_tokenizer
from clipa.backends.data.webdataset_io import POS_EXT, read_shard_samples
from clipa.errors import UserError
from clipa.recipe import AugmentSpec, DatasetSpec, OptimizerSpec, Stage
from tiny_run import default_sigint

CAPTION = "well, here we can actually see a small red star that is sitting near the top of the picture"


def test_spacy_package_is_core_web_sm_3_8_0():
    spec = importlib.util.find_spec(syntax_prep.DEFAULT_MODEL)
    meta = json.loads((Path(spec.origin).parent / "meta.json").read_text())
    assert "core_web_sm" in meta["name"] and meta["version"] == "3.8.0" and meta["lang"] == "en"


def test_model_name_overridable_and_missing_model_is_a_user_error(monkeypatch):
    monkeypatch.setenv("CLIPA_SPACY_MODEL", "no_such_pipeline_xyz")
    assert syntax_prep.model_name() == "no_such_pipeline_xyz"
    with pytest.raises(UserError, match="no_such_pipeline_xyz"):
        syntax_prep.load_nlp()


def _cfg(text_len):
    return JobConfig(image_size=16, augment=AugmentSpec(), mask_kind=None, grid_side=2, keep_tokens=4,
                     text_len=text_len, text_kind="syntax", seed=0, rank=0)


def _sample(caption, pos=None):
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 10, 10)).save(buf, format="JPEG")
    m = {"jpg": buf.getvalue(), "txt": caption.encode()}
    if pos is not None:
        m[POS_EXT] = json.dumps(pos).encode()
    return m


def test_syntax_keeps_nouns_then_adjectives_in_caption_order():
    import spacy  # the expectation comes from spaCy's own tags, read here independently
    doc = spacy.load(syntax_prep.DEFAULT_MODEL)(CAPTION)
    nouns = [t.text for t in doc if t.pos_ in ("NOUN", "PROPN")]
    adjs = [t.text for t in doc if t.pos_ == "ADJ"]
    assert nouns == ["star", "top", "picture"] and adjs == ["small", "red"]
    tok = get_tokenizer()
    out = run(_cfg(2 + 3), [(0, "a", _sample(CAPTION))])  # room for the nouns only
    assert tok.decode(out["text"][0]) == "star top picture"
    out = run(_cfg(2 + 5), [(0, "a", _sample(CAPTION))])  # nouns + adjectives, in the caption's order
    assert tok.decode(out["text"][0]) == "small red star top picture"


def test_stored_priorities_are_used_when_present():
    # a pos.json that ranks the filler words first must change what is kept
    words = ["well", ",", "red", "star"]
    out = run(_cfg(2 + 2), [(0, "a", _sample("well, red star", {"words": words, "prio": [0, 2, 2, 0]}))])
    assert get_tokenizer().decode(out["text"][0]) == "well star"


def test_prepare_writes_pos_json_and_batches_equal_online_tagging(tmp_path):
    from clipa.backends.data.demo_data import generate
    paths = generate(tmp_path / "demo", n_train=24, n_val=10, image_size=32, tag=False)
    assert syntax_prep.main([paths["train"], str(tmp_path / "prepared"), "--spacy-model", syntax_prep.DEFAULT_MODEL]) == 0
    samples, errors = read_shard_samples(tmp_path / "prepared" / "shard-00000.tar")
    assert not errors and len(samples) == 24 and all(POS_EXT in s and "jpg" in s for s in samples)
    st = Stage(name="s", samples=24, global_batch=8, image_size=32, text_len=6, text_reduction="syntax",
               optimizer=OptimizerSpec(lr=1e-3))
    enc = encoders.get("test")
    online = train_batches(DatasetSpec(name="demo", train=paths["train"], workers=0), st, enc, batch_size=8)
    stored = train_batches(DatasetSpec(name="demo", train=str(tmp_path / "prepared"), workers=0), st, enc, batch_size=8)
    for _ in range(3):
        a, b = next(online), next(stored)
        np.testing.assert_array_equal(a["text"], b["text"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_prepare_stopped_by_ctrl_c_says_so_in_one_line_and_continues_where_it_stopped(tmp_path):
    """Tagging is the slow offline step (about a millisecond per caption per core): stopped half-way, it
    used to print a KeyboardInterrupt traceback, and the same command tagged every shard again. The
    shards equal those of an uninterrupted run that tags two at a time in processes of their own."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from clipa.backends.data.demo_data import SHARD_SAMPLES, generate

    paths = generate(tmp_path / "demo", n_train=4 * SHARD_SAMPLES, n_val=10, image_size=16, tag=False)
    out, ref = tmp_path / "tagged", tmp_path / "ref"
    cmd = [sys.executable, "-m", "clipa.backends.data.syntax_prep", paths["train"]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # one process: the shard in progress is the only one finished after the signal
    proc = subprocess.Popen([*cmd, str(out), "--processes", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=default_sigint)
    deadline = time.time() + 300
    while proc.poll() is None and not list(out.glob("*.tar")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # after the first of four shards (each takes about a second)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"interrupted: the shards written to {out} are whole and kept")
    done = sorted(p.name for p in out.iterdir())
    assert 1 <= len(done) < 4 and all(not n.startswith(".") for n in done), done  # no partial shard left

    again = subprocess.run([*cmd, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(done)} of 4 shards in {out} already tagged by {syntax_prep.DEFAULT_MODEL}" in again.stderr
    assert syntax_prep.main([paths["train"], str(ref), "--processes", "2"]) == 0  # uninterrupted, two at a time
    for shard in sorted(ref.glob("*.tar")):
        assert read_shard_samples(out / shard.name) == read_shard_samples(shard)


def test_an_output_folder_that_cannot_be_made_is_one_line_exit_2(tmp_path, capsys):
    from clipa.backends.data.demo_data import SHARD_SAMPLES, generate

    paths = generate(tmp_path / "demo", n_train=SHARD_SAMPLES, n_val=10, image_size=16, tag=False)
    (tmp_path / "a-file").write_text("x")
    assert syntax_prep.main([paths["train"], str(tmp_path / "a-file" / "tagged")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'a-file' / 'tagged'}: Not a directory", err


def test_untagged_captions_that_would_slow_a_syntax_stage_below_its_prediction_are_said(tmp_path):
    """A $100 plan's 64-px syntax pre-training on a100x8 is predicted near its data bound: with the plan's 11
    workers per GPU, tagging online still keeps up; with 2 (16 decoders) it cannot, and clipa-plan/clipa-run
    say so, naming the command that tags once. Tagged shards say nothing."""
    from clipa.backends.data.webdataset_io import write_shard
    from clipa.costmodels.predict import predict_recipe
    from clipa.planner.run import make_plan

    for i, tagged in enumerate((False, True)):
        write_shard(tmp_path / f"{tagged}.tar", [{"__key__": f"k{j}", "jpg": b"x", "txt": b"a cat on a mat",
                                                  **({POS_EXT: b"{}"} if tagged else {})} for j in range(4)])
    planned = make_plan(budget_usd=100, device_hours=None, hw_name="a100x8", dataset="laion-2b", quiet=True).recipe

    def note(shards: str, workers: int):
        ds = planned.dataset.model_copy(update={"train": str(tmp_path / shards), "workers": workers})
        rec = planned.model_copy(update={"dataset": ds, "predictions": None})
        return syntax_prep.untagged_note(rec.model_copy(update={"predictions": predict_recipe(rec)}))

    assert planned.dataset.workers == 11 and planned.stages[0].text_reduction == "syntax"
    assert note("False.tar", 11) is None and note("True.tar", 2) is None
    said = note("False.tar", 2)
    assert said.startswith(f"dataset.train: {tmp_path / 'False.tar'} has no part-of-speech tags (.pos.json), so "
                           "stage pretrain tags every caption as it trains (about 1.6 ms a caption per core): at most ")
    assert " samples/s on 16 decoding processes, below the " in said
    assert said.endswith(f"python -m clipa.backends.data.syntax_prep '{tmp_path / 'False.tar'}' TAGGED_DIR, then "
                         "set dataset.train to the shards in TAGGED_DIR")


def test_a_tagging_process_killed_half_way_is_one_line_exit_1_and_the_shards_written_are_kept(tmp_path):
    """The system kills a process when memory runs out: that printed concurrent.futures' BrokenProcessPool
    traceback. Now one line says how many shards are whole and that the same command tags the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from clipa.backends.data.demo_data import SHARD_SAMPLES, generate

    paths = generate(tmp_path / "demo", n_train=8 * SHARD_SAMPLES, n_val=10, image_size=16, tag=False)
    out = tmp_path / "tagged"
    cmd = [sys.executable, "-m", "clipa.backends.data.syntax_prep", paths["train"], str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*cmd, "--processes", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 300
    while proc.poll() is None and not list(out.glob("*.tar")) and time.time() < deadline:
        time.sleep(0.01)
    taggers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"],
                                              capture_output=True, text=True).stdout.split()]
    assert taggers, "no tagging process found"
    os.kill(taggers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    done = sorted(p.name for p in out.iterdir())
    assert 1 <= len(done) < 8 and all(not n.startswith(".") for n in done), done  # no partial shard left
    assert last.startswith(f"error: a tagging process died (the system kills processes when memory runs out); "
                           f"{len(done)} of 8 shards in {out} are tagged, whole and kept"), last
    # the killed tagger's part-written copy (its fs.write_atomic temporary file) is removed too, now or,
    # where its parent was killed with it, by the next run
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = out / f".{done[0]}.{gone.pid}.0badf00d.tmp"
    orphan.write_bytes(b"part of a shard")
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and f"{len(done)} of 8 shards in {out} already tagged" in again.stderr, again.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"shard-{i:05d}.tar" for i in range(8)]  # and no orphan
