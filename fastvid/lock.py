"""One process per output folder: a training run's folder, a shard OUT.

Two runs writing into one folder mix their files without a word (one run's config.yaml with the other's
checkpoints; shards listed by a run that did not make them). The process that uses a folder holds an
exclusive `flock` on FOLDER/.lock; a second one gets one line naming the folder and the holder's pid. The
kernel drops the lock with the process (kill -9 included), so no stale lock is ever left to clean up; the
file itself stays (deleting it would let a third process lock a new file while the second holds the old).
A process forked while the lock is held (a decode or transcode worker) closes its copy at once: a flock
belongs to the open file, so a worker still exiting after its parent's kill -9 would otherwise hold it.
"""
from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from fastvid.errors import RunError, UserError

LOCK_NAME = ".lock"


class FolderInUse(UserError, OSError):
    """Another process holds the folder's lock: one line, naming the folder and the holder."""


class FolderLock:
    """The lock on one folder, held until `release()`, the end of a `with` block, or this object's end."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self._fd = folder, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


# Folders this process holds: locking one again from the same process (a resumed run in a test, a library
# user) returns the same lock instead of refusing the process itself.
_held: weakref.WeakValueDictionary[Path, FolderLock] = weakref.WeakValueDictionary()


def _close_in_child() -> None:
    for lock in list(_held.values()):
        if lock._fd is not None:
            os.close(lock._fd)  # the child's copy only: the parent's descriptor keeps the lock
            lock._fd = None


os.register_at_fork(after_in_child=_close_in_child)


def lock_folder(folder: str | Path, user: str) -> FolderLock:
    """Create `folder` if needed and lock it for this process; `user` says who wants it ("fastvid train").
    Raises FolderInUse when another process holds it, RunError when it is a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder}: is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if (held := _held.get(key)) is not None and held._fd is not None:
        return held
    fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderInUse(f"{folder}: in use by another process ({holder}); wait for it to end or choose "
                          f"another folder for {user}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, {user}\n".encode(), 0)
    _held[key] = lock = FolderLock(folder, fd)
    return lock
