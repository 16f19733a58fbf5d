"""The shard index's tar header walker against Python's tarfile, on the formats tar writers produce."""
import io
import tarfile

import pytest

from clipa.backends.data.webdataset_io import index_shard, tar_members


def _tar(path, fmt, names, dirs=()):
    with tarfile.open(path, "w", format=fmt) as tf:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for i, name in enumerate(names):
            data = bytes([i % 251]) * (1 + 700 * i)   # sizes across block boundaries
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _by_tarfile(path):
    with tarfile.open(path, "r:") as tf:
        return [(m.name, m.offset_data, m.size) for m in tf if m.isfile()]


LONG = "d/" + "x" * 120 + "/000001"        # over ustar's 100-byte name: a prefix field (ustar) or a long-name record
CASES = {
    "ustar": (tarfile.USTAR_FORMAT, ["000000.jpg", "000000.txt", "sub/000001.png", "sub/000001.txt", LONG + ".txt"]),
    "gnu": (tarfile.GNU_FORMAT, ["000000.jpg", "000000.txt", "y" * 150 + ".jpg", "y" * 150 + ".txt", "z.txt"]),
    "pax": (tarfile.PAX_FORMAT, ["000000.jpg", "000000.txt", "café/000001.jpg", "café/000001.txt", "z.txt"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_members_equal_tarfiles(tmp_path, case):
    fmt, names = CASES[case]
    path = _tar(tmp_path / f"{case}.tar", fmt, names, dirs=("d", "sub"))
    got = list(tar_members(path))
    assert got == _by_tarfile(path)
    assert [n for n, _, _ in got] == names


def test_bad_checksum_is_corrupt_and_keeps_samples_before_it(tmp_path):
    path = _tar(tmp_path / "s.tar", tarfile.USTAR_FORMAT, ["a.jpg", "a.txt", "b.jpg", "b.txt", "c.jpg", "c.txt"])
    members = list(tar_members(path))
    raw = bytearray(path.read_bytes())
    raw[members[4][1] - 512 + 10] ^= 0xFF           # damage c.jpg's header (its name byte): checksum no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(tar_members(path))
    idx = index_shard(path)
    assert [e.key for e in idx.entries] == ["a"] and idx.errors == {"corrupt_shard": 1}  # b may be cut short: dropped


def test_index_follows_a_rewritten_shard(tmp_path):
    path = _tar(tmp_path / "s.tar", tarfile.USTAR_FORMAT, ["a.jpg", "a.txt"])
    assert [e.key for e in index_shard(path).entries] == ["a"]
    _tar(tmp_path / "s.tar", tarfile.USTAR_FORMAT, ["a.jpg", "a.txt", "b.jpg", "b.txt"])
    assert [e.key for e in index_shard(path).entries] == ["a", "b"]
