"""One filesystem layer: a run directory (and any file clipa writes) is a local path or a URL.

    fs.path("runs/demo")          -> pathlib.Path, unchanged behaviour
    fs.path("gs://bucket/run")    -> UrlPath over fsspec (gcsfs for gs://; memory:// and file:// in tests)

``UrlPath`` has the part of pathlib's interface the run-directory code uses (``/``, exists, read/write,
open, glob, iterdir, stat().st_size, unlink, mkdir), so that code is written once for both. It has no
``__fspath__``: handing a URL to ``open()`` or a library that wants a local file fails loudly instead of
writing a file named ``gs:`` in the working directory.

``write_atomic`` is clipa's one atomic writer: every file a reader may see half-written (recipes,
achieved.json, checkpoints, caches, shards) goes through it. Only ``fsspec`` is imported here, and only
when a URL is used: the planner imports this module and must start fast.
"""
from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Union

from clipa.errors import UserError

# fsspec protocol -> the package that provides it, for the one-line error when it is missing.
_NEEDS = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}


def is_url(p) -> bool:
    return isinstance(p, UrlPath) or (isinstance(p, str) and "://" in p)


def path(p) -> Union[Path, "UrlPath"]:
    """``p`` (str, Path or UrlPath) as a path object of the layer."""
    if isinstance(p, UrlPath):
        return p
    return UrlPath(p) if is_url(p) else Path(p)


class UrlPath:
    """A file or folder at a URL, through fsspec. Folders need not exist on object stores (gs://)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.protocol = self.url.split("://", 1)[0]

    @property
    def _fs(self):
        import fsspec

        try:
            return fsspec.filesystem(self.protocol)
        except ImportError:
            pkg = _NEEDS.get(self.protocol, f"an fsspec implementation of {self.protocol}://")
            raise UserError(f"{self.url}: a {self.protocol}:// path needs the {pkg} package on this host "
                            f"(pip install {pkg})") from None
        except ValueError as e:  # fsspec: "Protocol not known"
            raise UserError(f"{self.url}: {e}") from None

    @property
    def _path(self) -> str:
        return self._fs._strip_protocol(self.url)

    def __truediv__(self, other) -> "UrlPath":
        return UrlPath(f"{self.url}/{other}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"UrlPath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: "UrlPath") -> bool:
        return self.url < other.url

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> "UrlPath":
        return UrlPath(self.url.rsplit("/", 1)[0])

    def with_name(self, name: str) -> "UrlPath":
        return self.parent / name

    def resolve(self) -> "UrlPath":
        return self

    absolute = resolve

    def exists(self) -> bool:
        return self._fs.exists(self._path)

    def is_dir(self) -> bool:
        return self._fs.isdir(self._path)

    def is_file(self) -> bool:
        return self._fs.isfile(self._path)

    def open(self, mode: str = "r", **kw):
        return self._fs.open(self._path, mode, **kw)

    def read_bytes(self) -> bytes:
        return self._fs.cat_file(self._path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        write_atomic(self, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        write_atomic(self, text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self._fs.makedirs(self._path, exist_ok=True)

    def iterdir(self) -> list["UrlPath"]:
        return [self / p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(self._path, detail=False)]

    def glob(self, pattern: str) -> list["UrlPath"]:
        return [self / p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.glob(f"{self._path}/{pattern}")]

    def stat(self):
        info = self._fs.info(self._path)
        mtime = info.get("mtime") or info.get("updated") or info.get("created") or 0
        return SimpleNamespace(st_size=int(info.get("size") or 0),
                               st_mtime=mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime or 0))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._fs.rm_file(self._path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        if self._fs.exists(self._path):
            self._fs.rm(self._path, recursive=True)


def write_atomic(dest, data: Union[bytes, str], *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``dest`` so that a reader finds the old file or the whole new one, never a part; a
    local file is on disk (fsync) before it takes the name. ``exclusive``: write only if ``dest`` does not
    exist yet (the first of several processes wins); returns whether this call wrote it."""
    p = path(dest)
    data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(p, UrlPath):
        # Object stores have no atomic rename (gs:// copies and deletes), but an object becomes visible
        # only once its upload completes: the final object is written directly.
        try:
            with p.open("xb" if exclusive else "wb") as fh:
                fh.write(data)
        except FileExistsError:
            return False
        return True
    # A name of its own per writer (pid + random), created with the umask's permissions (mkstemp's 0600
    # would make recipe.yaml unreadable to the other users of a shared filesystem).
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, p)
            return True
        try:
            os.link(tmp, p)  # atomic, and fails when another process got there first
        except FileExistsError:
            return False
        return True
    except OSError as e:
        if e.filename in (None, str(tmp)):  # write() names no file: a full disk's message should name this one
            e.filename = str(p)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_orphans(dest) -> None:
    """Remove the temporary files of ``write_atomic(dest)`` whose writer no longer runs: a writer killed
    (SIGKILL, or the system out of memory) leaves its part-written file, as its ``finally`` never runs.
    Writers are looked up on this host: a folder that writers on other hosts share is not for this."""
    p = path(dest)
    if isinstance(p, UrlPath):
        return  # written directly there: nothing left over
    for tmp in p.parent.glob(f".{glob.escape(p.name)}.*.tmp"):
        pid = tmp.name[len(p.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def append_text(dest, text: str) -> None:
    """``text`` added at the end of ``dest``. Object stores cannot append: the object is rewritten whole
    (metrics.jsonl, the one appended file, gets a line per log window and stays a few MB)."""
    p = path(dest)
    if isinstance(p, Path):
        with open(p, "a") as fh:
            fh.write(text)
        return
    old = p.read_bytes() if p.exists() else b""
    write_atomic(p, old + text.encode("utf-8"))


def sync(dest) -> None:
    """``dest``'s written bytes on disk (a local file); an object is durable once written."""
    p = path(dest)
    if isinstance(p, Path) and p.exists():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


def rmtree(dest) -> None:
    """A folder and everything under it; nothing when it does not exist."""
    import shutil

    p = path(dest)
    if isinstance(p, UrlPath):
        p.rmtree()
    else:
        shutil.rmtree(p, ignore_errors=True)


def local_dir(run_dir, name: str) -> Path:
    """A folder for files that must be local (the demo's generated shards, read with ``tarfile``):
    RUN_DIR/NAME for a local run directory; under this host's temp folder for a URL one (each host of a
    pod makes its own copy, which is deterministic)."""
    p = path(run_dir)
    if isinstance(p, Path):
        return p / name
    from clipa.rundir import safe_name

    return Path(tempfile.gettempdir()) / "clipa-url-runs" / safe_name(p.url) / name


def orbax_dir(dest):
    """``dest`` as orbax takes it: a local absolute path, or an ``etils.epath`` gs:// path (orbax and its
    TensorStore driver write gs:// themselves). UserError for a URL orbax cannot write (memory://)."""
    p = path(dest)
    if isinstance(p, Path):
        return p.absolute()
    if p.protocol == "file":
        return Path(p.url.split("://", 1)[1]).absolute()
    if p.protocol in ("gs", "s3"):
        from etils import epath

        return epath.Path(p.url)
    raise UserError(f"{p.url}: the JAX backend's checkpoints (orbax) need a local path or a gs:// URL")
