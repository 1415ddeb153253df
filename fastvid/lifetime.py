"""Worker processes end when the process that started them does, kill -9 included.

Decode and transcode workers hold hundreds of MB each; when a trainer or `fastvid shard` is killed
(kill -9, the OOM killer, a scheduler's hard stop) nothing runs in it to stop them, and a pipe to the
dead parent does not always tell (a sibling forked later keeps its end open). On Linux the kernel
signals a process when its parent dies (prctl PR_SET_PDEATHSIG); a parent that died before the worker
asked is seen from the worker's parent pid. Elsewhere only that check applies, where a worker makes it.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1
_parent: int | None = None  # set inside `children_end_with_this_process`: the pid forked children watch


def die_with_parent(parent_pid: int) -> None:
    """Call in a worker: the kernel kills it (SIGKILL) when its parent ends; if the parent `parent_pid`
    is already gone, it ends now."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _after_fork_in_child() -> None:
    if _parent is not None:
        die_with_parent(_parent)


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def children_end_with_this_process() -> Iterator[None]:
    """Every process forked (os.fork, multiprocessing's fork) inside the block ends with this process. For
    workers started another way (spawn), call `die_with_parent` in the worker."""
    global _parent
    previous, _parent = _parent, os.getpid()
    try:
        yield
    finally:
        _parent = previous
