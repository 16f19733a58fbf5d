"""Text token reduction (CLIPA Sec. 3): which BPE tokens of a caption fill the stage's text length.

Reductions act on the BPE ids between <start> and <end>; the budget is ``text_len - 2``.
``truncate`` keeps the first tokens, ``random`` a random subset in order, ``block`` a random
contiguous run, ``syntax`` nouns first, then adjectives, then the rest (earlier words first within a
class), re-sorted into the caption's order. CLIPA's paper ranks nouns > adjectives > others; open_clip's
``syntax_mask_tokenize`` also ranks verbs third, we follow the paper.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

TEXT_KINDS = ("truncate", "random", "block", "syntax")

# Universal POS tags (spaCy ``token.pos_``) -> keep priority, lower is kept first.
POS_PRIORITY = {"NOUN": 0, "PROPN": 0, "ADJ": 1}
OTHER_PRIORITY = 2


def pos_priority(pos: str) -> int:
    return POS_PRIORITY.get(pos, OTHER_PRIORITY)


def reduce_ids(ids: Sequence[int], kind: str, budget: int, rng: np.random.Generator,
               priorities: Optional[Sequence[int]] = None) -> list[int]:
    """At most ``budget`` of ``ids`` (original order kept). ``priorities`` (one per id) is needed by
    ``syntax``. Captions that fit are returned whole for every kind."""
    n = len(ids)
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown text reduction {kind!r}; known: {', '.join(TEXT_KINDS)}")
    if n <= budget:
        return list(ids)
    if kind == "truncate":
        keep = np.arange(budget)
    elif kind == "random":
        keep = np.sort(rng.choice(n, size=budget, replace=False))
    elif kind == "block":
        start = int(rng.integers(0, n - budget + 1))
        keep = np.arange(start, start + budget)
    else:
        if priorities is None or len(priorities) != n:
            raise ValueError("syntax reduction needs one priority per token")
        keep = np.sort(np.lexsort((np.arange(n), np.asarray(priorities)))[:budget])
    return [ids[i] for i in keep]


def word_ids(tokenizer, words: Sequence[str], priorities: Sequence[int]) -> tuple[list[int], list[int]]:
    """BPE ids of each word and the word's priority repeated per id (a word may be several ids)."""
    ids: list[int] = []
    prio: list[int] = []
    for w, p in zip(words, priorities):
        t = tokenizer.encode(w)
        ids += t
        prio += [p] * len(t)
    return ids, prio
