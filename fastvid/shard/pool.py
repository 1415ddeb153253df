"""Worker processes that a bad video cannot take down with the run.

A damaged file can crash FFmpeg (a segfault kills the process) or make a decoder spin. Under a plain
`multiprocessing.Pool` the first hangs the run for ever (the dead worker's result never comes) and the
second stalls it. Here every worker runs one video at a time; a worker that dies, or that runs past the
timeout, is replaced, and its video gets a stand-in result saying what happened. Results come back in
the order of the inputs, at most `2 * workers` ahead of the consumer.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import TypeVar

from fastvid.lifetime import die_with_parent

Item = TypeVar("Item")
Result = TypeVar("Result")

# fork starts a worker in milliseconds; spawn re-imports av, cv2 and the caller's __main__ in every worker.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _serve(work: Callable, conn: Connection, parent_pid: int) -> None:
    """A worker's loop: (index, item) in, (index, work(item)) out, None to stop. It ends with its parent:
    a killed run (kill -9) must not leave workers behind, and the parent's end of the pipe stays open in
    the workers forked after this one, so the pipe alone would not tell. Ctrl-C is the parent's to handle:
    it stops the workers, without a traceback from each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    while True:
        while not conn.poll(1.0):
            if os.getppid() != parent_pid:
                return
        if (task := conn.recv()) is None:
            return
        index, item = task
        conn.send((index, work(item)))


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext, work: Callable) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(work, child, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.task: int | None = None
        self.started = 0.0

    def give(self, index: int, item: object) -> None:
        self.conn.send((index, item))
        self.task, self.started = index, time.monotonic()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.kill()


def exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_isolated(work: Callable[[Item], Result], items: list[Item], workers: int, timeout: float | None,
                 lost: Callable[[Item, str, str], Result]) -> Iterator[Result]:
    """`work(item)` for every item, in order, computed in `workers` processes. When the worker running
    an item dies or passes `timeout` seconds (None: no limit), `lost(item, kind, reason)` stands in for
    its result, with kind "crashed" or "timeout"."""
    if not items:
        return
    context = multiprocessing.get_context(START_METHOD)
    pool = [_Worker(context, work) for _ in range(min(workers, len(items)))]
    window = 2 * len(pool)
    ready: dict[int, Result] = {}
    given = yielded = 0
    try:
        while yielded < len(items):
            for worker in pool:
                if worker.task is None and given < min(len(items), yielded + window):
                    worker.give(given, items[given])
                    given += 1
            busy = [w for w in pool if w.task is not None]
            wait_s = None if timeout is None else max(0.0, min(w.started for w in busy) + timeout - time.monotonic())
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=wait_s)
            for slot, worker in enumerate(pool):
                if worker.task is None:
                    continue
                index = worker.task
                if _received(worker, ready):
                    continue
                if not worker.process.is_alive():
                    reason = f"the worker transcoding it died ({exit_reason(worker.process.exitcode)})"
                    ready[index] = lost(items[index], "crashed", reason)
                elif timeout is not None and time.monotonic() - worker.started > timeout:
                    ready[index] = lost(items[index], "timeout", f"still running after {timeout:g} s; stopped")
                else:
                    continue
                worker.kill()
                pool[slot] = _Worker(context, work)
            while yielded in ready:
                yield ready.pop(yielded)
                yielded += 1
    finally:
        for worker in pool:
            if worker.task is None:
                worker.close()
            else:
                worker.kill()


def _received(worker: _Worker, ready: dict) -> bool:
    """Collect the worker's result if it has sent one; False if it has not (or died before it could)."""
    try:
        if not worker.conn.poll():
            return False
        index, result = worker.conn.recv()
    except (EOFError, OSError):
        return False
    ready[index] = result
    worker.task = None
    return True
