"""`build_loader`: shards + view specs -> an iterable of batches (dict of torch tensors on the device).

DALI (`fastvid.data.dali`) decodes and applies the geometric and photometric draws, normalises and
lays out RGB views as (N, C, T, H, W); this module checks the shards up front, builds one pipeline per
epoch (the epoch's seed sets the shuffle), and finishes views in torch on the training device: flow
de-quantisation and rescaling to the crop, mean subtraction and temporal flip, SpecAugment masks, dtype.
"""
from __future__ import annotations

import re
import tempfile
import threading
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path

import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from fastvid.data.dali import READER, ReaderArgs, output_names, views_pipeline
from fastvid.data.sampling import SampleDrawer
from fastvid.data.spec import DataConfig, ViewSpec
from fastvid.shard import read_manifest

FLOW_BOUND = 20.0  # px: the shard format stores 128 + u * 127 / bound
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LoaderError(RuntimeError):
    """A shard cannot be read as asked: names the shard and the sample key."""


def _required_exts(views: list[ViewSpec]) -> list[str]:
    exts = ["json"]
    if any(v.modality not in ("flow", "audio") for v in views):
        exts.append("mp4")
    if any(v.modality == "flow" for v in views):
        exts.append("flow.mp4")
    if any(v.modality == "audio" for v in views):
        exts.append("flac")
    return exts


def scan_indices(shards: list[dict], exts: list[str], on_error: str, workdir: Path,
                 undecodable: frozenset[str] = frozenset()) -> tuple[list[str], dict[str, int], list[str]]:
    """Check every sample of every shard's DALI index for the members `exts`, before any decoding.

    Returns the index files to read (rewritten without the incomplete samples, and without the
    `undecodable` "shard:key" names, when on_error="skip"), key -> position in the dataset (stable:
    skipped samples keep their numbers free), and the skipped "shard:key" names. Raises LoaderError
    naming shard and key for the first incomplete sample."""
    indices, key_index, skipped, position = [], {}, [], 0
    for shard in shards:
        lines = Path(shard["index"]).read_text().splitlines()
        kept = []
        for line in lines[1:]:
            fields = line.split()
            names = fields[3::4]
            key = names[0].split(".", 1)[0]
            have = {n.split(".", 1)[1] for n in names}
            missing = [e for e in exts if e not in have]
            if missing and on_error == "raise":
                raise LoaderError(f"{shard['tar']}: sample {key!r} has no {', '.join('.' + m for m in missing)} "
                                  f"member (the views need {', '.join(exts)})")
            name = f"{Path(shard['tar']).name}:{key}"
            if missing or name in undecodable:
                skipped.append(name)
            else:
                kept.append(line)
                key_index[key] = position
            position += 1
        if len(kept) == len(lines) - 1:
            indices.append(shard["index"])
        else:
            path = workdir / Path(shard["index"]).name
            path.write_text("\n".join([f"{lines[0].split()[0]} {len(kept)}", *kept]) + "\n")
            indices.append(str(path))
    return indices, key_index, skipped


NVDEC_VP9_MIN = 128  # pixels, both sides: DALI's NVDEC check on an H100 (80x64 H.264 decodes there)


class VideoLoader:
    """Iterate batches for one process: dict view name -> tensor, plus "label" and "index" (N,) int64.

    With on_error="skip", `skipped` lists the "shard:key" samples left out (missing members, found before
    reading, and undecodable ones, found while reading and also listed in `undecodable`)."""

    def __init__(self, cfg: DataConfig, views: list[ViewSpec], *, rank: int, world_size: int,
                 device: torch.device | str):
        self.cfg, self.views = cfg, views
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        manifest = read_manifest(cfg.shards)
        shards = [s for s in manifest["shards"] if s["split"] == cfg.split]
        if not shards:
            raise LoaderError(f"{cfg.shards}: no shards of split {cfg.split!r} "
                              f"(splits: {sorted({s['split'] for s in manifest['shards']})})")
        options = manifest.get("options", {})
        self.codec = options.get("codec", "h264")
        self.audio_rate = int(options.get("audio_rate", 24000))
        self._shards = shards
        self._tmp = tempfile.TemporaryDirectory(prefix="fastvid-idx-")
        self.undecodable: set[str] = set()  # "shard:key" found undecodable while reading (on_error="skip")
        self._scan()
        if cfg.decode == "gpu" and self.device.type != "cuda":
            raise LoaderError("decode='gpu' needs a CUDA device for the loader")
        self.decode = "mixed" if cfg.decode == "gpu" or (cfg.decode == "auto" and self.device.type == "cuda") \
            else "cpu"
        short_side = int(options.get("short_side") or 0)
        if self.decode == "mixed" and self.codec == "vp9" and 0 < short_side < NVDEC_VP9_MIN:
            raise LoaderError(f"{cfg.shards}: NVDEC decodes VP9 only from {NVDEC_VP9_MIN}x{NVDEC_VP9_MIN} up and "
                              f"these shards have short side {short_side}: decode on the CPU (decode='cpu') or "
                              f"re-shard with --codec h264 or --short-side {NVDEC_VP9_MIN}")
        self.names = output_names(views)
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch already yielded

    def _scan(self) -> None:
        """(Re)read the shard indices, leaving out the samples to skip; set up the reader."""
        indices, self.key_index, self.skipped = scan_indices(
            self._shards, _required_exts(self.views), self.cfg.on_error, Path(self._tmp.name),
            frozenset(self.undecodable))
        if not self.key_index:
            raise LoaderError(f"{self.cfg.shards}: no complete sample in split {self.cfg.split!r} "
                              f"({len(self.skipped)} skipped)")
        self.reader = ReaderArgs(tars=[s["tar"] for s in self._shards], indices=indices, shard_id=self.rank,
                                 num_shards=self.world_size, shuffle_buffer=self.cfg.shuffle_buffer,
                                 pad_last_batch=not self.cfg.drop_last)

    def samples(self) -> int:
        """Samples this rank reads per epoch (DALI gives shard i the samples [iN/S, (i+1)N/S))."""
        n = len(self.key_index)
        return (self.rank + 1) * n // self.world_size - self.rank * n // self.world_size

    def __len__(self) -> int:
        b = self.cfg.batch_size
        return self.samples() // b if self.cfg.drop_last else -(-self.samples() // b)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning: its own shuffle and its own augmentation draws."""
        self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume mid-epoch: the next iteration skips the batches already consumed."""
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def _pipeline(self):
        drawer = SampleDrawer(self.views, self.key_index, self.cfg.seed, self.epoch)
        # Seed per epoch: a new shuffle each epoch, the same one for a given (seed, epoch).
        seed = (self.cfg.seed * 1_000_003 + self.epoch) % (2 ** 31)
        device_id = (self.device.index or 0) if self.decode == "mixed" else None
        pipe = views_pipeline(self.reader, self.views, drawer, self.codec, self.audio_rate, self.decode,
                              batch_size=self.cfg.batch_size, num_threads=self.cfg.threads,
                              device_id=device_id, seed=seed, prefetch_queue_depth=self.cfg.prefetch)
        pipe.build()
        return pipe

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while (yield from self._epoch()):  # a sample was found undecodable and is now skipped: go on
            pass
        self.set_epoch(self.epoch + 1)

    def _epoch(self) -> Generator[dict[str, torch.Tensor], None, bool]:
        """Yield the rest of the epoch's batches; True when it stopped at an undecodable sample that
        on_error="skip" now leaves out (the epoch restarts without it, past the batches yielded)."""
        policy = LastBatchPolicy.DROP if self.cfg.drop_last else LastBatchPolicy.PARTIAL
        pipe, it = self._pipeline(), None
        try:
            it = DALIGenericIterator([pipe], self.names, reader_name=READER, last_batch_policy=policy,
                                     auto_reset=False)
            for i, outputs in enumerate(it):
                if i < self.consumed:  # resuming: these were yielded before the checkpoint
                    continue
                batch = self._finish(outputs[0])
                self.consumed = i + 1
                yield batch
        except RuntimeError as err:
            culprit = _failed_sample(str(err))
            if self.cfg.on_error == "skip" and culprit and culprit not in self.undecodable:
                self.undecodable.add(culprit)
                self._scan()
                warnings.warn(f"{culprit}: undecodable, left out from now on; epoch {self.epoch} "
                              f"goes on reshuffled without it after the {self.consumed} batches already given, "
                              "so a few of its samples may come twice or not at all", stacklevel=2)
                return True
            raise LoaderError(f"reading {culprit or ', '.join(self.reader.tars)} failed: {err}") from err
        finally:
            held = [it, pipe]
            it = pipe = None  # the thread below must hold the last references, or the shutdown runs here
            _shutdown_later(held)
        return False

    def _finish(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """DALI outputs -> the batch contract: one tensor per view on the device, label, index."""
        batch = {"label": out["label"].to(self.device).long(), "index": out["index"].to(self.device).long()}
        for view in self.views:
            x = out[view.name].to(self.device, non_blocking=True)
            if view.modality == "audio":
                aux = out[f"{view.name}.aux"].to(self.device)
                batch[view.name] = finish_audio(x, aux, view.audio.freq_masks).to(DTYPES[view.dtype])
            elif view.modality == "flow":
                aux = out[f"{view.name}.aux"].to(self.device)
                batch[view.name] = finish_flow(x, aux, view).to(DTYPES[view.dtype])
            else:
                batch[view.name] = finish_rgb(x, view)
        return batch


def _failed_sample(message: str) -> str | None:
    """"shard.tar:key" of the sample a DALI error names (its source info is "path.tar:offset:key.ext")."""
    found = re.search(r'"([^"]*?([^/"]+\.tar)):\d+:([^".]+)\.[^"]*"', message)
    return f"{found.group(2)}:{found.group(3)}" if found else None


def _shutdown_later(held: list) -> None:
    """Drop `held`, the last references to an epoch's pipeline and iterator, on a daemon thread: the
    pipeline's shutdown waits for the batches the iterator scheduled past the epoch's end (0.3-1 s on 2
    cores, seconds with the GPU decoder), which the next epoch's pipeline need not wait for."""
    threading.Thread(target=held.clear, daemon=True).start()


def finish_rgb(x: torch.Tensor, view: ViewSpec) -> torch.Tensor:
    """(N, 3, T, H, W) float from DALI (normalised, channel-split there) -> the view's dtype, and
    (N, 3, H, W) for a frame view."""
    x = x.to(DTYPES[view.dtype])
    return x[:, :, 0] if view.modality == "frame" else x


def finish_flow(x: torch.Tensor, aux: torch.Tensor, view: ViewSpec) -> torch.Tensor:
    """(N, T, H, W, 2) uint8 quantised flow -> (N, 2, T, H, W) float32 in pixels.
    aux (N, 3): output pixels per source pixel along x (negative when the view was flipped: u changes
    sign) and y, temporal flip flag. A displacement resized with its frame scales with it."""
    flow = (x.float() - 128.0) * (FLOW_BOUND / 127.0)  # (N, T, H, W, 2) in source pixels
    flow = flow * aux[:, None, None, None, 0:2]  # (N, T, H, W, 2) in output pixels
    if view.spatial.flow_mean:
        flow = flow - flow.mean(dim=(2, 3), keepdim=True)  # each frame's mean motion (camera)
    flipped = aux[:, 2] > 0.5
    flow = torch.where(flipped.view(-1, 1, 1, 1, 1), flow.flip(1), flow)
    return flow.permute(0, 4, 1, 2, 3).contiguous()  # (N, 2, T, H, W)


def finish_audio(spec: torch.Tensor, aux: torch.Tensor, freq_masks: int) -> torch.Tensor:
    """(N, F, T) log-mel -> (N, 1, F, T) with SpecAugment masks set to the spectrogram's mean.
    aux (N, 2k): (start, width) per frequency mask, then per time mask."""
    n, f, t = spec.shape
    fill = spec.mean(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    bins = torch.arange(f, device=spec.device).view(1, f, 1)
    steps = torch.arange(t, device=spec.device).view(1, 1, t)
    masks = aux.view(n, -1, 2)  # (N, masks, 2)
    masked = torch.zeros_like(spec, dtype=torch.bool)
    for k in range(masks.shape[1]):
        start = masks[:, k, 0].view(-1, 1, 1)
        width = masks[:, k, 1].view(-1, 1, 1)
        axis = bins if k < freq_masks else steps
        masked |= (axis >= start) & (axis < start + width)
    return torch.where(masked, fill, spec).unsqueeze(1)  # (N, 1, F, T)


def build_loader(data_cfg: DataConfig, views: list[ViewSpec], *, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> VideoLoader:
    """The loader of `views` over `data_cfg.shards` for process `rank` of `world_size`."""
    names = [v.name for v in views]
    if len(set(names)) != len(names) or {"label", "index"} & set(names):
        raise ValueError(f"view names must be unique and not 'label'/'index': {names}")
    return VideoLoader(data_cfg, views, rank=rank, world_size=world_size, device=device)
