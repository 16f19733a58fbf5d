"""The inputs of the ``syntax`` text reduction (clipa/reductions.py): a priority per BPE id.

Reductions act on the BPE ids between <start> and <end>; the budget is ``text_len - 2``. CLIPA's paper
ranks nouns > adjectives > others; open_clip's ``syntax_mask_tokenize`` also ranks verbs third, we
follow the paper.
"""
from __future__ import annotations

from typing import Sequence

# Universal POS tags (spaCy ``token.pos_``) -> keep priority, lower is kept first.
POS_PRIORITY = {"NOUN": 0, "PROPN": 0, "ADJ": 1}
OTHER_PRIORITY = 2


def pos_priority(pos: str) -> int:
    return POS_PRIORITY.get(pos, OTHER_PRIORITY)


def word_ids(tokenizer, words: Sequence[str], priorities: Sequence[int]) -> tuple[list[int], list[int]]:
    """BPE ids of each word and the word's priority repeated per id (a word may be several ids)."""
    ids: list[int] = []
    prio: list[int] = []
    for w, p in zip(words, priorities):
        t = tokenizer.encode(w)
        ids += t
        prio += [p] * len(t)
    return ids, prio
