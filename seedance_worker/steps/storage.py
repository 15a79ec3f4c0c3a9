"""Where downloaded files go: a small ``Storage`` protocol and the local-directory default.

A file is written to a temp object first (``.<name>.part`` next to the final name, so a reader never
sees a partial file under ``<task_id>.mp4``) and made visible by ``commit``: fsync, then an atomic
rename. A partial file survives a failed attempt, so the next attempt can resume it with a ``Range``
request; an exclusive ``flock`` on it keeps two copies of one download (a redelivered message) from
writing the same partial file at once. The lock dies with its process, so a killed worker leaves
nothing locked.

The partial file is opened without following a symlink, and a name that holds anything but a
regular file with one link (a symlink, a hard link to a file elsewhere, a FIFO) is removed and
created afresh: writing (or truncating) through it would change a file outside the download dir.
Next to it, ``.<name>.part.json`` keeps what the server said about the bytes in it (its ``ETag`` /
``Last-Modified`` and size, ``save_meta``): a resume is only asked for (``If-Range``) and accepted
against them, and a partial file without one is restarted from byte 0.

Names come from remote task ids only (``file_name``): anything outside ``[A-Za-z0-9._:-]`` is refused
and the resolved path must stay directly inside the root, so neither ``..`` nor an absolute path nor a
symlink can place a file elsewhere. ``storage_s3.py`` implements the same protocol for S3.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from seedance_worker.client import validate_task_id
from seedance_worker.errors import DownloadError

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
META_SUFFIX = ".json"  # after PART_SUFFIX: .<name>.part.json
META_MAX_BYTES = 4096
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a planted FIFO must not hang; it is then refused like any non-regular file.
_OPEN_FLAGS |= getattr(os, "O_NONBLOCK", 0)


class StorageBusy(Exception):
    """Another process holds the partial file of this name: the same download is running elsewhere."""


@dataclass
class PartialFile:
    """An open, locked temp file; ``offset`` bytes of an earlier attempt are already in it."""

    name: str
    fh: BinaryIO
    offset: int
    meta: dict[str, Any] = field(default_factory=dict)  # what the server said about these bytes

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes written so far (an S3 upload keeps them: it cannot be read back)."""
        kept = getattr(self.fh, "head", None)
        if callable(kept):
            return bytes(kept(n))
        self.fh.flush()
        return os.pread(self.fh.fileno(), n, 0)


@runtime_checkable
class Storage(Protocol):
    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int | None: ...

    def open_partial(self, name: str) -> PartialFile: ...

    def commit(self, name: str, tmp: PartialFile) -> str: ...

    def discard(self, tmp: PartialFile) -> None: ...

    def release(self, tmp: PartialFile) -> None: ...

    def save_meta(self, tmp: PartialFile, meta: dict[str, Any]) -> None: ...

    def uri(self, name: str) -> str: ...


def file_name(task_id: str, suffix: str) -> str:
    """``<task_id><suffix>`` for a well-formed remote task id; DownloadError(kind=bad_task_id) else."""
    try:
        validate_task_id(task_id)
    except Exception:
        raise DownloadError(
            f"refusing to store a file for malformed task id {task_id!r}", "bad_task_id"
        ) from None
    safe = task_id.replace(":", "_") if os.name == "nt" else task_id
    return safe + suffix


def check_name(name: str) -> str:
    """``name`` when it is one plain, visible file name (no path, no dot file); DownloadError else."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.isabs(name)
    ):
        raise DownloadError(f"refusing unsafe file name {name!r}", "bad_task_id")
    return name


class LocalStorage:
    """Files in one directory of the local file system (``SEEDANCE_DOWNLOAD_DIR``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root.resolve(strict=True)

    def path(self, name: str) -> Path:
        """The final path of ``name``; refuses anything that would not sit directly inside the root."""
        check_name(name)
        root = self._root()
        candidate = root / name
        # resolve() follows a symlink planted under the final name: it must still land in root.
        if candidate.resolve().parent != root:
            raise DownloadError(
                f"refusing file name {name!r}: it resolves outside the download dir", "bad_task_id"
            )
        return candidate

    def _part_path(self, name: str) -> Path:
        final = self.path(name)
        return final.with_name("." + final.name + PART_SUFFIX)

    def _meta_path(self, name: str) -> Path:
        part = self._part_path(name)
        return part.with_name(part.name + META_SUFFIX)

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def size(self, name: str) -> int | None:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            return None

    def uri(self, name: str) -> str:
        return self.path(name).resolve().as_uri()

    def open_partial(self, name: str) -> PartialFile:
        part = self._part_path(name)
        fd = _open_own_file(part)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageBusy(name) from None
            raise
        # The path may have been renamed to its final name (or replaced) between our open and our
        # lock: then this inode is no longer the partial file, and writing to it would be wrong.
        try:
            same = os.stat(part, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            raise StorageBusy(name)
        fh = os.fdopen(fd, "r+b")
        offset = fh.seek(0, os.SEEK_END)
        meta = _read_meta(self._meta_path(name)) if offset else {}
        return PartialFile(name=name, fh=fh, offset=offset, meta=meta)

    def save_meta(self, tmp: PartialFile, meta: dict[str, Any]) -> None:
        """Keep ``meta`` next to the partial file (we hold its lock, so nobody else writes it)."""
        tmp.meta = dict(meta)
        path = self._meta_path(tmp.name)
        if not meta:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        fd = _open_own_file(path)
        with os.fdopen(fd, "r+b") as fh:
            fh.truncate()
            fh.write(json.dumps(meta, separators=(",", ":")).encode())
            fh.flush()
            os.fsync(fh.fileno())

    def commit(self, name: str, tmp: PartialFile) -> str:
        final = self.path(name)
        part = self._part_path(name)
        tmp.fh.flush()
        os.fsync(tmp.fh.fileno())
        # The facts go first: a crash in between leaves a partial file that restarts, not a stray file.
        with contextlib.suppress(FileNotFoundError):
            self._meta_path(name).unlink()
        os.replace(part, final)  # still holding the lock: nobody can be writing the renamed inode
        tmp.fh.close()
        _fsync_dir(final.parent)
        return final.resolve().as_uri()

    def discard(self, tmp: PartialFile) -> None:
        for path in (self._meta_path(tmp.name), self._part_path(tmp.name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        tmp.fh.close()

    def release(self, tmp: PartialFile) -> None:
        """Close (and unlock) a partial file, keeping its bytes for the next attempt to resume."""
        with contextlib.suppress(OSError):
            tmp.fh.flush()
        tmp.fh.close()


def _open_own_file(path: Path) -> int:
    """A read-write fd of the regular, singly linked file at ``path`` (created if missing).

    Whatever else sits at the name (a symlink, a hard link to a file elsewhere, a FIFO) is removed
    first, never written through: only the name goes, the file it pointed at is left untouched.
    """
    for _ in range(3):
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK):
                raise
            _remove_planted(path, "a symlink, a directory or a socket")
            continue
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
        what = f"a file with {st.st_nlink} links" if stat.S_ISREG(st.st_mode) else "not a regular file"
        _remove_planted(path, what)
    raise DownloadError(f"refusing {path.name}: something keeps replacing it", "bad_partial")


def _remove_planted(path: Path, what: str) -> None:
    log.warning("storage: %s is %s; removing the name and starting it afresh", path, what)
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        why = f"refusing {path.name}: it is {what} and cannot be removed"
        raise DownloadError(why, "bad_partial") from exc


def _read_meta(path: Path) -> dict[str, Any]:
    """The partial file's saved server facts, or ``{}`` when missing, odd or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > META_MAX_BYTES:
            return {}
        try:
            meta = json.loads(fh.read(META_MAX_BYTES))
        except ValueError:
            return {}
    return meta if isinstance(meta, dict) else {}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
