"""The CLIP BPE tokenizer against open_clip's own ``tokenize`` (the reference implementation)."""
from __future__ import annotations

import numpy as np

from clipa.backends.data.tokenizer import Tokenizer, get

TEXTS = ["A photo of a cat.", "well, here we can actually see a small red star", "naïve café — 3 dogs!!", ""]


def test_matches_open_clip_tokenize_and_round_trips():
    import open_clip
    tok = get()
    ours = tok(TEXTS, 77)
    ref = open_clip.tokenize(TEXTS, context_length=77).numpy()
    np.testing.assert_array_equal(ours, ref)
    assert ours.dtype == np.int32
    assert tok.vocab_size == 49408 and (tok.sot_id, tok.eot_id) == (49406, 49407)
    assert tok.decode(ours[0]) == "a photo of a cat ."
    assert tok.decode(tok(["the quick brown fox"], 16)[0]) == "the quick brown fox"


def test_truncation_keeps_end_token_and_shorter_lengths():
    tok = Tokenizer()
    long = " ".join(["word"] * 50)
    row = tok([long], 8)[0]
    assert row[0] == tok.sot_id and row[-1] == tok.eot_id and (row != 0).all()
    assert tok([long], 77)[0][: 7].tolist() == row[:7].tolist()


def test_tokenizer_does_not_import_the_open_clip_model_code():
    import subprocess
    import sys
    code = ("import sys; from clipa.backends.data.tokenizer import get; get(); "
            "print('timm' in sys.modules, 'open_clip.factory' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
