"""CLIP BPE tokenizer (open_clip's ``SimpleTokenizer``; its vocab file ships in the package, no network).

``open_clip/tokenizer.py`` imports torch at module level, so this module needs torch installed even
for JAX-only users (open_clip_torch depends on it anyway). We load that one file by path rather than
``import open_clip.tokenizer``: the package ``__init__`` would also import the model factory and
timm (~2 s and a few hundred MB per decoding worker, measured on the dev box), none of which the
tokenizer uses.
"""
from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from typing import Sequence

import numpy as np

_MODULE = "clipa_open_clip_tokenizer"


@lru_cache(maxsize=1)
def _open_clip_tokenizer_module():
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        from clipa.errors import UserError
        raise UserError("the CLIP tokenizer needs open_clip_torch: pip install 'clipa[torch]'")
    path = f"{list(spec.submodule_search_locations)[0]}/tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location(_MODULE, path)
    mod = importlib.util.module_from_spec(mod_spec)
    sys.modules[_MODULE] = mod
    mod_spec.loader.exec_module(mod)
    return mod


class Tokenizer:
    """CLIP BPE: ``tok(texts, text_len)`` -> int32 [B, text_len] = <start> ids <end>, zero padded.

    No reduction here beyond plain truncation (the <end> token is always kept); the stage's text
    reductions (text_reduction.py) work on ``encode`` output.
    """

    def __init__(self):
        self._bpe = _open_clip_tokenizer_module().SimpleTokenizer()
        self.sot_id: int = self._bpe.sot_token_id
        self.eot_id: int = self._bpe.eot_token_id
        self.vocab_size: int = self._bpe.vocab_size

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without <start>/<end> (open_clip's cleaning: ftfy, lower case)."""
        return self._bpe.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; <start>, <end> and padding (0) are dropped."""
        ids = [int(i) for i in ids if int(i) not in (0, self.sot_id, self.eot_id)]
        return self._bpe.decode(ids).strip()

    def pack(self, ids: Sequence[int], text_len: int) -> np.ndarray:
        """<start> ids[: text_len - 2] <end> in an int32 row of ``text_len`` (zero padded)."""
        body = list(ids)[: max(0, text_len - 2)]
        row = np.zeros(text_len, np.int32)
        row[: len(body) + 2] = [self.sot_id, *body, self.eot_id]
        return row

    def __call__(self, texts: Sequence[str], text_len: int) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), text_len), np.int32)
        for i, t in enumerate(texts):
            out[i] = self.pack(self.encode(t), text_len)
        return out


@lru_cache(maxsize=1)
def get() -> Tokenizer:
    """The process-wide tokenizer (building it reads the 1.3 MB vocab; do it once per process)."""
    return Tokenizer()
