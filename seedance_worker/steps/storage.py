"""Where downloaded files go: a small ``Storage`` protocol and the local-directory default.

A file is written to a temp object first (``.<name>.part`` next to the final name, so a reader never
sees a partial file under ``<task_id>.mp4``) and made visible by ``commit``: fsync, then an atomic
rename. A partial file survives a failed attempt, so the next attempt can resume it with a ``Range``
request; an exclusive ``flock`` on it keeps two copies of one download (a redelivered message) from
writing the same partial file at once. The lock dies with its process, so a killed worker leaves
nothing locked.

Names come from remote task ids only (``file_name``): anything outside ``[A-Za-z0-9._:-]`` is refused
and the resolved path must stay directly inside the root, so neither ``..`` nor an absolute path nor a
symlink can place a file elsewhere. An fsspec/S3 backend can implement the same protocol.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from seedance_worker.client import validate_task_id
from seedance_worker.errors import DownloadError

PART_SUFFIX = ".part"


class StorageBusy(Exception):
    """Another process holds the partial file of this name: the same download is running elsewhere."""


@dataclass
class PartialFile:
    """An open, locked temp file; ``offset`` bytes of an earlier attempt are already in it."""

    name: str
    fh: BinaryIO
    offset: int


@runtime_checkable
class Storage(Protocol):
    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int | None: ...

    def open_partial(self, name: str) -> PartialFile: ...

    def commit(self, name: str, tmp: PartialFile) -> str: ...

    def discard(self, tmp: PartialFile) -> None: ...

    def release(self, tmp: PartialFile) -> None: ...

    def uri(self, name: str) -> str: ...

    def path(self, name: str) -> Path: ...


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
        part = final.with_name("." + final.name + PART_SUFFIX)
        if part.is_symlink():
            raise DownloadError(f"refusing partial file for {name!r}: it is a symlink", "bad_task_id")
        return part

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
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(part, flags, 0o644)
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
        return PartialFile(name=name, fh=fh, offset=offset)

    def commit(self, name: str, tmp: PartialFile) -> str:
        final = self.path(name)
        part = self._part_path(name)
        tmp.fh.flush()
        os.fsync(tmp.fh.fileno())
        os.replace(part, final)  # still holding the lock: nobody can be writing the renamed inode
        tmp.fh.close()
        _fsync_dir(final.parent)
        return final.resolve().as_uri()

    def discard(self, tmp: PartialFile) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._part_path(tmp.name).unlink()
        tmp.fh.close()

    def release(self, tmp: PartialFile) -> None:
        """Close (and unlock) a partial file, keeping its bytes for the next attempt to resume."""
        with contextlib.suppress(OSError):
            tmp.fh.flush()
        tmp.fh.close()


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
