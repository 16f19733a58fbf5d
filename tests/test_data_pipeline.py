"""The training pipeline on real tar shards: sharding, determinism/resume, corrupt data, workers."""
from __future__ import annotations

import concurrent.futures as cf
import gzip
import io
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from clipa import encoders
from clipa.backends.data import workers
from clipa.backends.data.pipeline import DataStats, RankStream, _job_config, batches_for, start_workers, train_batches
from clipa.backends.data.tokenizer import get as get_tokenizer
from clipa.backends.data.webdataset_io import check_first_shard, expand_shards, index_shard, write_shard
from clipa.errors import DecodersDied, UserError
from clipa.recipe import AugmentSpec, DatasetSpec, ImageReductionSpec, OptimizerSpec, Stage

ENC = encoders.get("test")  # patch 8


def _jpeg(i: int, px: int = 40) -> bytes:
    rng = np.random.default_rng(i)
    a = rng.integers(0, 256, (px, px + 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


def make_shards(root, n_shards=3, per_shard=7, start=0):
    paths = []
    for s in range(n_shards):
        samples = []
        for j in range(per_shard):
            i = start + s * per_shard + j
            samples.append({"__key__": f"s{i:05d}", "jpg": _jpeg(i), "txt": f"sample number {i}".encode()})
        paths.append(write_shard(root / f"shard-{s:03d}.tar", samples))
    return paths


def stage(kind="resize", ratio=0.0, text="truncate", size=32, text_len=8, aug=None):
    return Stage(name="t", samples=100, global_batch=4, image_size=size, text_len=text_len, text_reduction=text,
                 image_reduction=ImageReductionSpec(kind=kind, mask_ratio=ratio), optimizer=OptimizerSpec(lr=1e-3),
                 augment=aug or AugmentSpec(color_jitter=(0.4, 0.4, 0.4, 0.1), grayscale_p=0.2))


def sample_ids(batch) -> list[int]:
    """Recover each row's sample number from its caption ("sample number N"; the tokenizer splits N
    into single digits, which decode as "1 1 9")."""
    tok = get_tokenizer()
    return [int("".join(tok.decode(row).split()[2:])) for row in batch["text"]]


def test_expand_brace_list_dir_and_missing(tmp_path):
    paths = make_shards(tmp_path / "d", 3, 2)
    assert expand_shards(str(tmp_path / "d" / "shard-{000..002}.tar")) == paths
    assert expand_shards(str(tmp_path / "d")) == paths
    lst = tmp_path / "list.txt"
    lst.write_text("# shards\nd/shard-000.tar\nd/shard-{001..002}.tar\n")
    assert expand_shards(str(lst)) == paths
    with pytest.raises(UserError, match="shard-003.tar"):
        expand_shards(str(tmp_path / "d" / "shard-{000..009}.tar"))
    with pytest.raises(UserError, match="nowhere"):
        train_batches(DatasetSpec(name="custom", train=str(tmp_path / "nowhere")), stage(), ENC, batch_size=2)


def test_rank_split_is_disjoint_and_complete_each_epoch(tmp_path):
    paths = make_shards(tmp_path, 5, 3)
    for world in (2, 8):  # more shards than ranks, and fewer (sample-level split)
        per_rank = []
        for r in range(world):
            it = RankStream(paths, r, world, seed=3, stats=DataStats(), block=4).refs()
            length = RankStream(paths, r, world, 3, DataStats(), 4).epoch_length(0)
            per_rank.append([next(it)[2].key for _ in range(length)])
        flat = [k for keys in per_rank for k in keys]
        assert sorted(flat) == sorted(f"s{i:05d}" for i in range(15)), world


def test_shuffle_differs_by_seed_and_epoch(tmp_path):
    paths = make_shards(tmp_path, 2, 10)

    def keys(seed):
        it = RankStream(paths, 0, 1, seed, DataStats(), block=8).refs()
        return [next(it)[2].key for _ in range(40)]
    a, b = keys(0), keys(1)
    assert a != b and sorted(a[:20]) == sorted(a[20:]) and a[:20] != a[20:]


def test_resume_equals_uninterrupted_across_epochs(tmp_path):
    make_shards(tmp_path, 3, 5)  # 15 samples: 4 batches of 2 per rank cross the epoch boundary
    ds = DatasetSpec(name="custom", train=str(tmp_path), workers=0)
    st = stage("random_mask", 0.5, "random")
    for rank in (0, 1):
        full = train_batches(ds, st, ENC, batch_size=2, rank=rank, world_size=2, seed=7)
        ref = [next(full) for _ in range(12)]
        resumed = train_batches(ds, st, ENC, batch_size=2, rank=rank, world_size=2, seed=7, start_sample=5 * 2 * 2)
        for want in ref[5:]:
            got = next(resumed)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k])


def _streams(tmp_path, workers: int):
    """One stream of batches twice: decoded in this process, and by ``dataset.workers`` processes."""
    make_shards(tmp_path, 2, 6)
    ds = DatasetSpec(name="custom", train=str(tmp_path), workers=workers)
    st = stage("grid_mask", 0.75, "block")
    return train_batches(ds, st, ENC, batch_size=3, seed=1, workers=0), train_batches(ds, st, ENC, batch_size=3, seed=1)


def _same_batch(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])


def test_a_later_stage_or_a_resumed_run_counts_past_samples_without_reading_every_shard_again(tmp_path):
    """A stream that starts past an epoch (the next stage, a resumed run) counts the samples before it
    from the shards' summaries: kept by the process, or saved by an earlier one (RUN_DIR/shard_counts.json);
    it read every shard's tar headers again before. A shard changed since is counted again."""
    from itertools import islice

    from clipa.backends.data import webdataset_io as wio

    paths = make_shards(tmp_path, 12, 5)  # 60 samples an epoch
    wio.take_unsaved()  # what earlier tests in this process counted
    walks = wio._index_cached.cache_info
    before = walks().misses
    first = list(islice(RankStream(paths, 0, 1, 0, DataStats(), block=8).refs(150), 6))  # 2.5 epochs in
    assert walks().misses - before >= 12
    saved = wio.take_unsaved()
    assert {k: v[2:] for k, v in saved.items()} == {str(p): [5, {}] for p in paths} and wio.take_unsaved() == {}

    def later() -> tuple[list, int]:
        before = walks().misses
        return list(islice(RankStream(paths, 0, 1, 0, DataStats(), block=8).refs(150), 6)), walks().misses - before

    assert later() == (first, 0)  # the next stage, in the same process (the shards it reads are cached too)
    for p in paths:  # a new process: nothing in memory but what the earlier one saved
        wio._SUMMARIES.pop(str(p))
    wio._index_cached.cache_clear()
    wio.learn(saved)
    got, n = later()
    assert got == first and n < len(paths)  # only the shards its blocks read (4 here), not all 12
    write_shard(paths[3], [{"__key__": f"n{i}", "jpg": _jpeg(i), "txt": b"new"} for i in range(2)])  # rewritten
    wio._index_cached.cache_clear()
    wio.learn(saved)
    before = walks().misses
    want = list(islice(RankStream(paths, 0, 1, 0, DataStats(), block=8).refs(150), 6))
    assert walks().misses - before >= 1 and want != first  # shard 3 counted again: 57 samples an epoch
    assert wio.take_unsaved() == {str(paths[3]): [*_version(paths[3]), 2, {}]}


def _version(p) -> list:
    st = os.stat(p)
    return [st.st_size, st.st_mtime_ns]


def test_workers_give_the_same_batches(tmp_path):
    a, b = _streams(tmp_path, 2)
    for _ in range(5):
        _same_batch(next(a), next(b))
    b.close()


def test_a_decoding_worker_serves_on_after_sigterm_and_ends_after_its_grace():
    """SIGTERM to every process of a job (SLURM's preemption) used to kill a worker at once, sometimes
    half-way through sending a batch back, which left the pool's reader, and so the trainer's exit,
    waiting forever. Now the worker goes on serving, and ends itself once the grace has passed."""
    grace = 2
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=workers.worker_init,
                                initargs=(os.getpid(), grace)) as pool:
        pid = pool.submit(os.getpid).result(timeout=120)
        os.kill(pid, signal.SIGTERM)
        sent = time.monotonic()
        assert pool.submit(os.getpid).result(timeout=60) == pid  # the same process, still serving
        with pytest.raises(cf.process.BrokenProcessPool):
            while time.monotonic() - sent < 60:
                pool.submit(time.sleep, 0.05).result(timeout=60)
        ended = time.monotonic() - sent
    assert grace - 0.5 < ended < grace + 20, ended


@pytest.fixture
def fresh_workers():
    """Decoding processes of this test's own: their deaths count for the process that started them."""
    workers.close_all()
    yield
    workers.close_all()


def _kill_the_idle_worker() -> None:
    """SIGKILL (as the system ends a process when memory runs out) the one decoding worker, once it is idle:
    a job queued behind the stream's own returns its pid."""
    pool = start_workers(1)
    os.kill(pool.result(pool.submit(os.getpid)), signal.SIGKILL)


def test_a_killed_decoding_worker_is_replaced_and_the_stream_goes_on_unchanged(tmp_path, capfd, fresh_workers):
    want, got = _streams(tmp_path, 1)
    for i in range(8):
        if i in (1, 4):
            _kill_the_idle_worker()
        _same_batch(next(want), next(got))
    assert capfd.readouterr().err.count("clipa data: a decoding process died") == 2
    _kill_the_idle_worker()
    with pytest.raises(DecodersDied, match="dataset.workers: a decoding process died 3 times"):
        for _ in range(3):
            next(got)


def _sending(pid: int) -> bool:
    """Whether process ``pid``'s main thread waits to write to a pipe (Linux's /proc/PID/wchan)."""
    with open(f"/proc/{pid}/wchan") as f:
        return f.read().endswith("pipe_write")  # anon_pipe_write in newer kernels


def test_a_decoding_worker_killed_half_way_through_sending_a_batch_back_is_replaced(capfd):
    """SIGKILL (as the system ends a process when memory runs out) half-way through sending a batch back
    used to leave half a message in concurrent.futures' shared result pipe, and its reader, so the trainer,
    waiting for the rest forever (6 hangs in 60 tries of a 200 MB result killed at a random moment)."""
    pool = workers.Workers(1)
    try:
        caught = 0
        for _ in range(20):  # a try misses when the batch is sent before we see the worker sending it
            pid = pool.result(pool.submit(os.getpid))
            big = pool.submit(np.full, 100_000_000, 7, np.uint8)
            waited = time.monotonic()
            while not _sending(pid) and time.monotonic() - waited < 60:
                time.sleep(0.001)
            if _sending(pid):
                os.kill(pid, signal.SIGKILL)
                caught += 1
            np.testing.assert_array_equal(pool.result(big)[-1000:], 7)  # from the next worker, if it was killed
            if caught == 2:
                break
        assert caught == 2 and pool.deaths == 2
        assert capfd.readouterr().err.count("clipa data: a decoding process died") == 2
    finally:
        pool.close()


class _Unreadable(Exception):
    def __init__(self, message: str, where: str):  # pickled with its message alone: it will not unpickle
        super().__init__(message)


def _fail_unreadably() -> None:
    raise _Unreadable("no", "here")


def test_a_job_whose_error_cannot_be_read_back_raises_and_the_worker_serves_on():
    """An exception that does not unpickle in the parent used to end the thread reading the worker's results,
    and the trainer waited for them forever."""
    pool = workers.Workers(1)
    try:
        pid = pool.result(pool.submit(os.getpid))
        with pytest.raises(RuntimeError, match="could not be read back"):
            pool.result(pool.submit(_fail_unreadably))
        assert pool.result(pool.submit(os.getpid)) == pid and pool.deaths == 0
    finally:
        pool.close()


def test_batch_contract(tmp_path):
    make_shards(tmp_path, 2, 4)
    ds = DatasetSpec(name="custom", train=str(tmp_path), workers=0)
    st = stage("block_mask", 0.5, "truncate", size=32, text_len=6)
    batch = next(train_batches(ds, st, ENC, batch_size=4))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 3, 32, 32)
    assert batch["text"].dtype == np.int32 and batch["text"].shape == (4, 6)
    assert batch["keep"].dtype == np.int32 and batch["keep"].shape == (4, st.image_tokens(ENC))
    tok = get_tokenizer()
    assert (batch["text"][:, 0] == tok.sot_id).all() and (batch["text"] == tok.eot_id).sum() == 4
    assert "keep" not in next(train_batches(ds, stage(), ENC, batch_size=4))


def test_image_equals_plain_pil_centre_crop_normalised_with_open_clip_stats(tmp_path):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    make_shards(tmp_path, 1, 1)  # one 48 x 40 JPEG: no draft reduction at 32 px, so the result is exact
    ds = DatasetSpec(name="custom", train=str(tmp_path), workers=0)
    st = stage(aug=AugmentSpec(random_resized_crop=None))
    got = next(train_batches(ds, st, ENC, batch_size=1))["image"][0]
    im = Image.open(io.BytesIO(_jpeg(0))).convert("RGB")
    im = im.crop((4, 0, 44, 40)).resize((32, 32), Image.BICUBIC)
    want = (np.asarray(im, np.float64) / 255 - OPENAI_DATASET_MEAN) / OPENAI_DATASET_STD
    want = want.transpose(2, 0, 1)
    # resize(box=...) lets the bicubic filter read pixels just outside the crop: only the border differs
    np.testing.assert_allclose(got[:, 2:-2, 2:-2], want[:, 2:-2, 2:-2], atol=1e-5)
    assert np.abs(got - want).max() < 0.2


def test_shards_a_user_may_give_by_mistake_are_named_in_one_line(tmp_path):
    """Compressed shards, a binary file where a shard list goes and shards whose captions are not .txt
    are refused up front, saying which; data with no usable sample at all says why when training meets it."""
    (shard,) = make_shards(tmp_path / "d", 1, 3)
    gz = tmp_path / "shard.tar.gz"
    gz.write_bytes(gzip.compress(shard.read_bytes()))
    with pytest.raises(UserError, match="shard.tar.gz: a gzip-compressed file; clipa reads plain .tar shards"):
        expand_shards(str(gz))  # read as a list file before: UnicodeDecodeError
    with pytest.raises(UserError, match="a gzip-compressed file"):
        check_first_shard(gz.rename(tmp_path / "named.tar"))
    notar = tmp_path / "shard-0"  # a plain tar without the .tar suffix is a shard, not a list file
    notar.write_bytes(shard.read_bytes())
    assert expand_shards(str(notar)) == [notar]
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"d/shard-000.tar\n\xff\xfe\n")
    with pytest.raises(UserError, match="list.bin: neither a .tar shard nor a text file listing shards"):
        expand_shards(str(binary))
    jsononly = write_shard(tmp_path / "j.tar", [{"__key__": f"k{i}", "jpg": _jpeg(i), "json": b"{}"} for i in range(3)])
    with pytest.raises(UserError, match=r"j.tar: no usable sample \(3 without a .txt caption\)"):
        check_first_shard(jsononly)
    check_first_shard(shard)
    it = train_batches(DatasetSpec(name="custom", train=str(jsononly), workers=0), stage(), ENC, batch_size=2)
    with pytest.raises(UserError, match=r"no readable samples .* skipped: 3 without a .txt caption"):
        next(it)


def test_corrupt_shard_and_bad_image_are_skipped_and_counted(tmp_path):
    make_shards(tmp_path, 2, 4)
    good = (tmp_path / "shard-001.tar").read_bytes()
    (tmp_path / "shard-002.tar").write_bytes(good[: len(good) // 2])  # truncated download
    (tmp_path / "shard-003.tar").write_bytes(b"this is not a tar file" * 40)
    write_shard(tmp_path / "shard-004.tar", [
        {"__key__": "bad1", "jpg": b"\xff\xd8 garbage, not a jpeg", "txt": b"sample number 900"},
        {"__key__": "notext", "jpg": _jpeg(901)},
        {"__key__": "ok", "jpg": _jpeg(902), "txt": b"sample number 902"}])
    stats = DataStats()
    ds = DatasetSpec(name="custom", train=str(tmp_path), workers=0)
    it = train_batches(ds, stage(), ENC, batch_size=4, stats=stats)
    seen = [i for _ in range(6) for i in sample_ids(next(it))]
    assert stats.reasons["corrupt_shard"] == 2 and stats.reasons["missing_text"] == 1
    assert stats.reasons["undecodable_image"] >= 1 and stats.seen == 24
    assert stats.skipped == sum(stats.reasons.values())
    truncated = index_shard(tmp_path / "shard-002.tar")
    assert 0 < len(truncated.entries) < 4  # the complete samples before the cut are kept
    assert 900 not in seen  # the undecodable image's slot holds a copy of a good sample instead
    assert set(seen) <= set(range(8)) | {902}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_open_shard_files_stay_bounded_across_many_shards(tmp_path):
    """A rank walking through many shards keeps only its current shuffle block's shards open, at most
    ``max_open``; before the fix every shard touched stayed open until the generator ended. Shards are
    read in the calling process (workers get bytes), so workers=0 measures the only holder of shard files."""
    paths = make_shards(tmp_path, 40, 3)  # 120 samples
    cfg = _job_config(stage(), ENC, 0, 0)
    get_tokenizer()  # load it first: its files are not the pipeline's
    for block, max_open, bound in ((6, 32, 2),  # a 6-sample block covers exactly 2 of the 3-sample shards
                                   (10_000, 5, 5)):  # the whole epoch in one block: the cap holds
        base = peak = _open_fds()
        it = batches_for(paths, cfg, 4, 0, 1, 0, 0, DataStats(), block=block, max_open=max_open)
        ids = []
        for _ in range(30):  # one epoch: every shard is read
            ids += sample_ids(next(it))
            peak = max(peak, _open_fds())
        assert sorted(ids) == list(range(120))
        assert peak - base <= bound, (block, max_open, peak - base)
        it.close()
        assert _open_fds() == base
