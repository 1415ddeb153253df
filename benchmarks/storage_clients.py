"""Byte-range reads from an S3 server: requests/s and MB/s of candidate client libraries, one request per
sample (the loader's pattern), at 1 and several requests in flight.

Starts its own SeaweedFS server (tests/storage/seaweed.py), uploads a shard of the sample dataset and reads
every sample's members as one range, in a shuffled order, with each client. Prints a table, writes JSON and
a PNG. The server runs on the same cores as the client: the figures bound a client's cost per request, not S3's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (the server) from a checkout
from machine_info import cpu_name  # noqa: E402

from fastvid.storage import open_storage  # noqa: E402
from tests.storage.seaweed import SeaweedServer  # noqa: E402


def sample_ranges(idx: Path) -> list[tuple[int, int]]:
    """(start, end) per sample of a DALI index: its members are adjacent in the tar."""
    ranges = []
    for line in idx.read_text().splitlines()[1:]:
        f = line.split()
        offsets, sizes = [int(x) for x in f[1::4]], [int(x) for x in f[2::4]]
        ranges.append((min(offsets), max(o + s for o, s in zip(offsets, sizes))))
    return ranges


def boto3_reader(env: dict, bucket: str, key: str):
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_REGION"],
                          config=Config(max_pool_connections=32))
    return lambda a, b: client.get_object(Bucket=bucket, Key=key, Range=f"bytes={a}-{b - 1}")["Body"].read()


def obstore_reader(env: dict, bucket: str, key: str):
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, endpoint=env["AWS_ENDPOINT_URL"], access_key_id=env["AWS_ACCESS_KEY_ID"],
                    secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_REGION"],
                    client_options={"allow_http": True})
    return lambda a, b: bytes(obstore.get_range(store, key, start=a, end=b))


def s3fs_reader(env: dict, bucket: str, key: str):
    import s3fs

    fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                           client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"], "region_name": env["AWS_REGION"]})
    path = f"{bucket}/{key}"

    def read(a: int, b: int) -> bytes:
        with fs.open(path, "rb", block_size=0) as f:  # one ranged GET, no read-ahead block
            f.seek(a)
            return f.read(b - a)
    return read


READERS = {"boto3": boto3_reader, "obstore": obstore_reader, "s3fs": s3fs_reader}


def measure(read, ranges: list[tuple[int, int]], local: bytes, in_flight: int) -> dict:
    for a, b in ranges[:4]:  # warm the connection pool
        read(a, b)
    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        results = list(pool.map(lambda r: read(*r), ranges))
    seconds = time.perf_counter() - start
    assert all(data == local[a:b] for data, (a, b) in zip(results, ranges)), "a range read differs from the file"
    nbytes = sum(b - a for a, b in ranges)
    return {"requests_per_s": len(ranges) / seconds, "MB_per_s": nbytes / seconds / 1e6,
            "ms_per_request": seconds / len(ranges) * 1e3 * in_flight}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=str(Path.home() / ".cache/fastvid/sample/shards-32-8-128-dis-vp9"),
                    help="a shard folder; its first tar is uploaded")
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeat", type=int, default=8, help="passes over the tar's samples per measurement")
    ap.add_argument("--clients", nargs="+", default=list(READERS))
    ap.add_argument("--output", default="benchmarks/out/storage_clients.json")
    args = ap.parse_args()
    tar = sorted(Path(args.shards).glob("*.tar"))[0]
    local = tar.read_bytes()
    ranges = sample_ranges(tar.with_suffix(".idx")) * args.repeat
    np.random.default_rng(0).shuffle(ranges)
    rows = []
    with tempfile.TemporaryDirectory() as folder, SeaweedServer(Path(folder)) as server:
        env = server.env()
        os.environ.update(env)
        open_storage(f"s3://{server.bucket}").write(tar.name, local, Path(folder))
        for name in args.clients:
            try:
                read = READERS[name](env, server.bucket, tar.name)
            except ImportError as err:
                print(f"{name}: not installed ({err}); pip install -e '.[bench]'")
                continue
            for k in args.in_flight:
                rows.append({"client": name, "in_flight": k, **measure(read, ranges, local, k)})
                print(f"{name:8s} {k:3d} in flight: {rows[-1]['requests_per_s']:7.0f} requests/s "
                      f"{rows[-1]['MB_per_s']:7.1f} MB/s {rows[-1]['ms_per_request']:6.2f} ms/request", flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    mean = sum(b - a for a, b in ranges) / len(ranges)
    machine = cpu_name()
    out.write_text(json.dumps({"machine": machine, "cpus": os.cpu_count(), "tar": str(tar),
                               "bytes_per_request": mean, "rows": rows}, indent=1))
    plot(rows, args.in_flight, f"{machine}, {os.cpu_count()} cores; {mean / 1e3:.0f} kB per request",
         out.with_suffix(".png"))


def plot(rows: list[dict], in_flight: list[int], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = list(dict.fromkeys(r["client"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / len(in_flight)
    for k, n in enumerate(in_flight):
        rate = {r["client"]: r["requests_per_s"] for r in rows if r["in_flight"] == n}
        ax.bar(np.arange(len(clients)) + k * width, [rate.get(c, 0) for c in clients], width, label=f"{n} in flight")
    ax.set_xticks(np.arange(len(clients)) + width * (len(in_flight) - 1) / 2, clients)
    ax.set_ylabel("byte-range requests/s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
