"""Fast-forward to a position past an epoch (a later stage, a resumed run): the data stream's start-up.

A stream that starts at sample N counts the samples of every shard before N. The figure: the stream's
first sample with the shards' counts known (kept by the process, or read from RUN_DIR/shard_counts.json
after a resume); the baseline, measured in the same run: the same stream in a process that knows no
count, which reads every shard's tar headers (what every later stage and every resume did before).

    python -m benchmarks.data_resume [--shards 100] [--per-shard 10000] [--reps 3]   # about 3.5 min on 2 cores

The shards hold real tar members (small payloads: counting reads headers only, so the payload's size
changes nothing but the disk space); the page cache holds them, so the baseline is the fastest it can be.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def first_sample_seconds(paths: list[Path], start: int, saved: dict | None) -> float:
    from clipa.backends.data import webdataset_io as wio
    from clipa.backends.data.pipeline import DataStats, RankStream

    wio._SUMMARIES.clear()  # a fresh process: nothing counted yet
    wio._index_cached.cache_clear()
    if saved is not None:
        wio.learn(saved)
    t = time.perf_counter()
    next(iter(RankStream(paths, 0, 1, 0, DataStats()).refs(start)))
    return time.perf_counter() - t


def main() -> None:
    from clipa.backends.data import webdataset_io as wio

    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        paths = [wio.write_shard(Path(d) / f"{s:05d}.tar", [
            {"__key__": f"{s:05d}{i:06d}", "jpg": b"\xff" * 64, "txt": b"a photo", "json": b"{}"}
            for i in range(a.per_shard)]) for s in range(a.shards)]
        start = a.shards * a.per_shard * 3 // 2  # half-way through the second epoch
        first_sample_seconds(paths, start, None)  # warm the page cache
        saved = wio.take_unsaved()
        base = statistics.median(first_sample_seconds(paths, start, None) for _ in range(a.reps))
        fast = statistics.median(first_sample_seconds(paths, start, saved) for _ in range(a.reps))
    print(f"stream start at sample {start:,} ({a.shards} shards of {a.per_shard:,}): {fast:.3f} s with the saved "
          f"counts (median of {a.reps})")
    print(f"baseline, no count known (every shard's tar headers read): {base:.2f} s -> {base / fast:.0f}x faster, "
          f"{base / a.shards * 1e3:.0f} ms a shard saved")


if __name__ == "__main__":
    main()
