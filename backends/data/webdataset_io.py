"""Webdataset tar shards (LAION / DataComp layout) read by random access.

A shard is a plain (uncompressed) tar whose members are ``KEY.EXT``: one image (``jpg``/``jpeg``/
``png``/``webp``), its caption (``txt``), optionally ``json`` and our ``pos.json`` (syntax_prep.py).
We index a shard's tar headers (cheap: 512-byte headers, data is seeked over) and read members by
offset. Knowing the sample count of each shard without reading images is what lets a resumed run
fast-forward to sample N exactly (pipeline.py).
"""
from __future__ import annotations

import contextlib
import functools
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from braceexpand import braceexpand

from clipa.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXT = "txt"
POS_EXT = "pos.json"


@dataclass(frozen=True)
class SampleEntry:
    """One sample of a shard: its key and ``{ext: (offset, size)}`` of the members we read."""

    key: str
    members: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ShardIndex:  # shared between callers by index_shard's cache: never modified
    path: Path
    entries: list[SampleEntry]
    errors: dict[str, int]  # reason -> count (corrupt_shard, missing_image, missing_text)


# Leading bytes of the compressed formats webdataset also reads (gzip, bzip2, xz, zstd). Shards are read by
# random access to their members, which a compressed stream does not allow.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_USTAR = slice(257, 262)  # where a POSIX tar header says "ustar"


def _head(p: Path) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(512)
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None


def _not_compressed(p: Path, head: bytes) -> None:
    kind = next((k for magic, k in _COMPRESSED.items() if head.startswith(magic)), None)
    if kind is not None:
        raise UserError(f"{p}: a {kind}-compressed file; clipa reads plain .tar shards by random access to their "
                        "members: decompress the shards first")


def _list_text(p: Path, head: bytes) -> str:
    """A list file's text (``head``: its first bytes); a compressed shard or any other binary file given for
    one is a one-line error."""
    _not_compressed(p, head)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: neither a .tar shard nor a text file listing shards (byte {e.start} is not "
                        "UTF-8)") from None


def check_first_shard(path: Path) -> None:
    """``path`` is a plain tar holding at least one usable sample (an image and its caption); else a
    one-line UserError saying what it holds instead."""
    _not_compressed(path, _head(path))
    idx = index_shard(path)
    if idx.entries:
        return
    if set(idx.errors) == {"corrupt_shard"}:
        raise UserError(f"{path}: not a readable tar shard")
    raise UserError(f"{path}: no usable sample ({describe(idx.errors)}); a sample is KEY.{'/'.join(IMAGE_EXTS)} "
                    f"with its caption in KEY.{TEXT_EXT}")


_REASONS = {"missing_text": f"without a .{TEXT_EXT} caption", "missing_image": "without an image",
            "corrupt_shard": "corrupt shard"}


def describe(errors: dict[str, int]) -> str:
    """Skip reasons and counts in words: '64 without a .txt caption, 1 corrupt shard'."""
    return ", ".join(f"{n:,} {_REASONS.get(r, r)}" for r, n in sorted(errors.items())) or "empty"


def expand_shards(spec: str) -> list[Path]:
    """Shard paths from a brace pattern (``/d/{00000..00099}.tar``), a list file (one path or pattern
    per line, ``#`` comments; relative to the file), a directory (its ``*.tar``, sorted) or one tar.
    Several specs may be joined with ``::`` (webdataset's convention). UserError on a missing path."""
    out: list[Path] = []
    for part in str(spec).split("::"):
        part = part.strip()
        if not part:
            continue
        p = Path(os.path.expanduser(part))
        if p.is_dir():
            found = sorted(p.glob("*.tar"))
            if not found:
                raise UserError(f"{p}: directory holds no .tar shards")
            out += found
        elif p.is_file() and not part.endswith(".tar") and (head := _head(p))[_USTAR] != b"ustar":
            # a list file (a plain tar named without .tar, "ustar" in its first header, is a shard)
            lines = [ln.split("#")[0].strip() for ln in _list_text(p, head).splitlines()]
            for ln in filter(None, lines):
                q = ln if os.path.isabs(ln) else str(p.parent / ln)
                out += expand_shards(q)
        else:
            for name in braceexpand(part):
                q = Path(os.path.expanduser(name))
                if not q.is_file():
                    raise UserError(f"{q}: shard not found (from {part!r})")
                out.append(q)
    if not out:
        raise UserError(f"{spec!r}: no shards")
    return out


def split_name(name: str) -> tuple[str, str]:
    """Webdataset's rule: the key is the path up to the first dot of the basename, the rest the ext."""
    d, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


# Tar header fields (POSIX ustar, also what GNU tar and Python's tarfile write for short names).
_BLOCK = 512
_FILE_TYPES = (b"0", b"\0", b"7")          # regular file, old-style regular file, contiguous file
_NO_DATA_TYPES = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, FIFOs
_END = bytes(_BLOCK)  # a zero block ends the archive


def tar_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, data size) of each regular file of an uncompressed tar, read from its headers.

    Why not ``tarfile``: it parses each header in Python objects, 47 us a member on the demo shards vs 11
    here (dev VM, load 7.8), so a LAION shard (10k samples, 20-30k members) took about a second of the
    loading process's time per epoch. This
    reads one 512-byte header per member with ``pread`` and hands any header it does not parse itself
    (GNU long names, pax records, sparse or base-256 sizes) to ``tarfile`` from that member on. A bad
    checksum or a header cut short raises ``tarfile.ReadError`` (``tarfile`` would end the archive there
    silently after its first member)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while True:
            h = os.pread(fd, _BLOCK, off)
            if len(h) < _BLOCK or h == _END:
                if h.strip(b"\0"):
                    raise tarfile.ReadError(f"header cut short at byte {off}")
                return
            kind = h[156:157]
            if (kind not in _FILE_TYPES and kind not in _NO_DATA_TYPES) or h[124] & 0x80:
                yield from _tarfile_members(path, skip=off)
                return
            if int(h[148:156].strip(b"\0 ") or b"-1", 8) != sum(h) - sum(h[148:156]) + 8 * 32:
                raise tarfile.ReadError(f"bad header checksum at byte {off}")
            n = int(h[124:136].strip(b"\0 ") or b"0", 8)
            if kind in _FILE_TYPES:
                name = h[:100].split(b"\0", 1)[0]
                prefix = h[345:500].split(b"\0", 1)[0] if h[257:262] == b"ustar" else b""
                yield (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape"), off + _BLOCK, n
            off += _BLOCK + -(-n // _BLOCK) * _BLOCK
    finally:
        os.close(fd)


def _tarfile_members(path: Path, skip: int) -> Iterator[tuple[str, int, int]]:
    """``tar_members`` through ``tarfile``, from the member whose header starts at byte ``skip`` on."""
    with tarfile.open(path, "r:") as tf:
        while (m := tf.next()) is not None:
            if m.offset >= skip and m.isfile():
                yield m.name, m.offset_data, m.size


def _walk(path: Path, read: bool) -> tuple[dict[str, dict], dict[str, int]]:
    """The members of the tar at ``path`` grouped by sample key, in file order: ``{key: {ext: (offset,
    size)}}``, or ``{ext: bytes}`` with ``read``. A truncated or corrupt tar keeps the complete samples
    before the damage and reports ``corrupt_shard``."""
    groups: dict[str, dict] = {}
    errors: dict[str, int] = {}
    try:
        size = path.stat().st_size
        with open(path, "rb") if read else contextlib.nullcontext() as f:  # the index needs headers only
            for name, offset, n in tar_members(path):
                if offset + n > size:
                    raise tarfile.ReadError("member past end of file")
                key, ext = split_name(name)
                if read:
                    f.seek(offset)
                groups.setdefault(key, {})[ext] = f.read(n) if read else (offset, n)
    except (tarfile.TarError, OSError, EOFError, ValueError):
        errors["corrupt_shard"] = 1
        if groups:  # the last group may be cut short: drop it
            groups.pop(next(reversed(groups)))
    return groups, errors


def index_shard(path: Path) -> ShardIndex:
    """Read the tar headers of ``path`` (``_walk``); samples without an image or caption are left out.

    The last few indexes are kept per process, keyed by the file's inode, size and times: a run start
    indexes the same first shards for the thread choice's decode probe and for each stage's sample
    counting and order."""
    st = os.stat(path)
    idx = _index_cached(Path(path), (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    _remember(path, (st.st_size, st.st_mtime_ns), idx)
    return idx


@functools.lru_cache(maxsize=8)
def _index_cached(path: Path, version: tuple) -> ShardIndex:
    groups, errors = _walk(path, read=False)
    entries = []
    for key, g in groups.items():
        img = next((e for e in IMAGE_EXTS if e in g), None)
        if img is None:
            errors["missing_image"] = errors.get("missing_image", 0) + 1
            continue
        if TEXT_EXT not in g:
            errors["missing_text"] = errors.get("missing_text", 0) + 1
            continue
        members = [(img, *g[img]), (TEXT_EXT, *g[TEXT_EXT])]
        if POS_EXT in g:
            members.append((POS_EXT, *g[POS_EXT]))
        entries.append(SampleEntry(key, tuple(members)))
    return ShardIndex(path, entries, errors)


@dataclass(frozen=True)
class ShardSummary:
    """What counting a shard needs: its usable samples and its problems (a ShardIndex without entries)."""

    count: int
    errors: dict[str, int]


# Every shard's summary, for the life of the process, with the (size, mtime) it was read at: a later
# stage, or a resumed run, fast-forwards past the samples drawn before it by counting them, and must not
# read every shard's tar headers again (0.3 s a 10,000-sample shard from the page cache, measured on the
# 2-core dev VM; after an epoch of DataComp-1B, 1.4B samples (Gadre et al. 2023) in 10,000-sample shards,
# a fine-tune on one 8-GPU node would re-read 17,500 shards a rank, about an hour and a half).
# A few dozen bytes a shard; an index with its entries is about 100 bytes a sample, hence index_shard's
# small cache. ``_UNSAVED``: the paths learnt since ``take_unsaved`` last ran.
_SUMMARIES: dict[str, tuple[tuple[int, int], ShardSummary]] = {}
_UNSAVED: set[str] = set()


def _remember(path: Path, version: tuple[int, int], idx: ShardIndex) -> None:
    key = str(path)
    hit = _SUMMARIES.get(key)
    if hit is None or hit[0] != version:
        _SUMMARIES[key] = (version, ShardSummary(len(idx.entries), dict(idx.errors)))
        _UNSAVED.add(key)


def shard_summary(path: Path) -> ShardSummary:
    """``path``'s sample count and problems: from this process's memory while the file is unchanged (same
    size and mtime), else by indexing it."""
    st = os.stat(path)
    hit = _SUMMARIES.get(str(path))
    if hit is not None and hit[0] == (st.st_size, st.st_mtime_ns):
        return hit[1]
    index_shard(path)
    return _SUMMARIES[str(path)][1]


def take_unsaved() -> dict[str, list]:
    """The summaries learnt since the last call, as JSON: ``{path: [size, mtime_ns, count, errors]}``."""
    out = {k: [*_SUMMARIES[k][0], _SUMMARIES[k][1].count, _SUMMARIES[k][1].errors] for k in sorted(_UNSAVED)}
    _UNSAVED.clear()
    return out


def learn(saved: dict[str, list]) -> None:
    """Summaries an earlier process saved (``take_unsaved``'s form); a shard changed since is indexed again
    when it is counted."""
    for key, (size, mtime, count, errors) in saved.items():
        _SUMMARIES.setdefault(key, ((int(size), int(mtime)), ShardSummary(int(count), dict(errors))))


# Open shard files at most, per reader. Our choice: far under the 1024 open files a Linux process gets by
# default (ulimit -n), which a rank touching thousands of shards would otherwise reach. Going over it only
# costs reopening: open+seek+read+close of a 1.5 kB member took 10 us vs 0.3 us on an open file (measured
# with a loop over 60 small shards on the 2-core dev VM), small next to decoding the JPEG.
MAX_OPEN_SHARDS = 32


class ShardReader:
    """Open file handles for a working set of shards; ``read`` returns ``{ext: bytes}``.

    The pipeline calls ``keep_only`` with the shards its current shuffle block still reads; past
    ``max_open`` handles the least recently read one is closed, so the count of open files stays bounded
    even when one block spans many small shards. A closed shard is simply reopened when read again."""

    def __init__(self, max_open: int = MAX_OPEN_SHARDS):
        if max_open < 1:
            raise ValueError(f"max_open {max_open} < 1")
        self.max_open = max_open
        self._files: dict[Path, object] = {}  # insertion order = least recently read first

    def read(self, path: Path, entry: SampleEntry) -> dict[str, bytes]:
        f = self._files.pop(path, None)
        if f is None:
            while len(self._files) >= self.max_open:
                self._files.pop(next(iter(self._files))).close()
            f = open(path, "rb")
        self._files[path] = f
        out = {}
        for ext, off, n in entry.members:
            f.seek(off)
            out[ext] = f.read(n)
        return out

    def keep_only(self, paths: set[Path]) -> None:
        """Close the handles of every shard not in ``paths``."""
        for p in [p for p in self._files if p not in paths]:
            self._files.pop(p).close()

    def close(self) -> None:
        self.keep_only(set())


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> Path:
    """Write ``samples`` (each ``{"__key__": str, ext: bytes}``) as a tar, atomically (``fs.write_atomic``)."""
    import io

    from clipa import fs

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            key = s["__key__"]
            for ext, data in s.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0  # same bytes for the same samples: shards are reproducible
                tf.addfile(info, io.BytesIO(data))
    fs.write_atomic(path, buf.getvalue())
    return Path(path)


def read_shard_samples(path: Path) -> tuple[list[dict[str, bytes]], dict[str, int]]:
    """All samples of a shard with every member (``__key__`` + ext -> bytes); used by syntax_prep."""
    groups, errors = _walk(path, read=True)
    return [{"__key__": key, **g} for key, g in groups.items()], errors
