"""Transcoding on a Ray cluster (`fastvid shard --ray`), with the contract of `pool.run_isolated`: `work(item)`
for every item, results in input order, a lost item replaced by `lost(item, kind, reason)`. run.py plans,
rolls shards, journals, resumes and records errors the same way for both; only where `work` runs differs.

One Ray task per video, and the sample's bytes come back to the driver, which writes the shards:
- A shard closes at `shard_size` bytes, so where shard k starts is known only once every sample before it
  is transcoded: a task per shard would wait for the one before it. Tasks per video run in any order on any
  node and the driver rolls their results in plan order, so the shards are a local run's, byte for byte,
  whatever the cluster's size; a killed driver resumes from its journal as a local run does.
- A task never writes: OUT is whatever the driver reaches, and a task that lingers after its driver was
  killed cannot touch a shard. The bytes cross the network once, to the driver (at short side 128 a few
  tens of kB per second of video, benchmarks/RESULTS.md: one driver's network is not the limit).
- A video that crashes its worker (FFmpeg segfault), raises, or loses its node costs only itself: Ray runs
  its task again up to `RETRIES` times, then the video is recorded as "crashed". A task still running
  `timeout` seconds after it started (retries included) is cancelled, its worker killed, and the video
  recorded as "timeout".
- Twice as many tasks as the cluster has CPUs are submitted, so a worker finds its next video waiting
  rather than idling while the driver hears of its last one and submits; no task is submitted further
  ahead of the driver's writing, so memory stays bounded whatever the input's size.
Every node needs fastvid and the same PyAV (its bundled encoders make the bytes) as the driver, and SRC at
the same path. The driver spends ~4.5 ms of CPU per video (submit, get, tar, journal): one driver keeps up
with ~200 videos/s, a few nodes' worth (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from fastvid.errors import RunError
from fastvid.shard.transcode import _one_line

Item = TypeVar("Item")
Result = TypeVar("Result")

RETRIES = 2  # runs after the first of a task whose worker or node died or that raised
LOCAL = "local"  # the address that starts a cluster on this machine for the run
CONNECT_TIMEOUT = 10.0  # seconds for the cluster's head to answer
# Ray starts its workers at nice 15; local worker processes run at the user's nice. On a busy machine that
# gave a started-for-the-run cluster ~0.8x the local pool's videos/s (benchmarks/RESULTS.md). A cluster
# that exists keeps its own settings.
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


def _call(work: Callable[[Item], Result], item: Item) -> Result:
    """The task's body: `work` (config and classes) comes from the object store, put there once per run."""
    return work(item)


def _connect(address: str, workers: int) -> bool:
    """Join the cluster at `address`, or start one on this machine (`LOCAL`, `workers` CPUs, 0: all cores).
    True when this call started Ray in this process, which then stops it."""
    try:
        import ray
    except ImportError:
        raise RunError("--ray needs Ray on this machine: pip install 'fastvid[ray]'") from None
    if ray.is_initialized():
        return False
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "://" not in address:  # Ray itself would retry a dead address for minutes;
        # a ray:// client address goes to Ray as given
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
        except OSError as err:
            raise RunError(f"Ray cluster at {address}: nothing answers ({err.strerror or err}); start one there "
                           "(`ray start --head`) or give its head's address") from None
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}  # the progress bar stays readable
    try:
        if address == LOCAL:  # Ray's own word for "start one", even beside a cluster running here
            ray.init(address=LOCAL, num_cpus=workers or None, include_dashboard=False, **quiet,
                     _system_config=LOCAL_SYSTEM_CONFIG)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise RunError(f"Ray cluster at {address}: cannot connect ({_one_line(err)})") from None
    return True


def run_on_ray(work: Callable[[Item], Result], items: list[Item], address: str, workers: int,
               timeout: float | None, lost: Callable[[Item, str, str], Result]) -> Iterator[Result]:
    """`work(item)` for every item, in order, as Ray tasks on the cluster at `address` (`workers`: the CPUs
    of one started for the run; see the module docstring); `lost(item, kind, reason)` stands in for an item
    whose task failed ("crashed") or ran past `timeout` seconds ("timeout"; None: no limit)."""
    if not items:
        return
    owns_ray = _connect(address, workers)
    import ray

    # task -> [item index, when its clock started (None: queued behind `cpus` older tasks)], oldest first
    running: dict[ray.ObjectRef, list] = {}
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=True)(_call)
        shared = ray.put(work)  # the config and class list once, not with every task
        ready: dict[int, Result] = {}
        given = yielded = 0
        while yielded < len(items):
            while given < min(len(items), yielded + 2 * cpus):
                running[task.remote(shared, items[given])] = [given, None]
                given += 1
            for entry in list(running.values())[:cpus]:  # Ray starts a driver's tasks in order: these run
                entry[1] = entry[1] or time.monotonic()
            clocks = [since for _, since in running.values() if since is not None]
            wait_s = None if timeout is None or not clocks else max(0.0, min(clocks) + timeout - time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            if done:  # and every other finished task: one pass over `running` per batch, not per result
                done, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
            for ref in done:
                index, _ = running.pop(ref)
                try:
                    ready[index] = ray.get(ref)
                except ray.exceptions.RayError as err:
                    ready[index] = lost(items[index], "crashed",
                                        f"its Ray task failed {RETRIES + 1} times ({_one_line(err)})")
            for ref, (index, since) in list(running.items()):
                if timeout is not None and since is not None and time.monotonic() - since > timeout:
                    ray.cancel(ref, force=True)  # kills the worker: a decoder that spins stops
                    del running[ref]
                    ready[index] = lost(items[index], "timeout", f"still running after {timeout:g} s; stopped")
            while yielded in ready:
                yield ready.pop(yielded)
                yielded += 1
    finally:
        for ref in running:  # an error or Ctrl-C in the driver: nothing keeps transcoding for nobody
            ray.cancel(ref, force=True)
        if owns_ray:
            ray.shutdown()
