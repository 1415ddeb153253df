"""Checkpoints and encoder files that hold tensors (safetensors) and plain data (JSON): loading one never
unpickles anything, so a crafted file cannot run code.

A training checkpoint is a folder with two files:
    state.json           {"format": "fastvid-checkpoint", "version": 1, "tensors": {"bytes", "crc32"},
                          "state": the saved structure, each tensor replaced by {"__tensor__": name},
                          "crc32": of the rest of the file (`json_checksum`)}
    tensors.safetensors  every tensor of the structure, by name
`save_checkpoint` writes the folder as `NAME.partial` and renames it once both files are on disk, so a
folder without the suffix is complete; the CRC-32s in state.json catch either file damaged later (one
changed digit in state.json would resume at another step).
`newest_checkpoint` tries the folders from the newest and names every one it skips, with the reason.

An encoders file (`encoders.pt`, the name `fastvid eval` has always taken) is one safetensors file: the
weights as `ENCODER/PARAM` and, in its metadata, {"method", "config", "step", "encoders": {name: {"arch",
"in_channels"}}} and the CRC-32 of that metadata and every tensor's bytes (a flipped bit in a weight
would otherwise evaluate without a word). It too is written to a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fastvid.checksum import json_checksum
from fastvid.errors import MissingFile, UserError, WriteFailed

FORMAT, VERSION = "fastvid-checkpoint", 1
STATE, TENSORS = "state.json", "tensors.safetensors"
PARTIAL = ".partial"


class CheckpointError(UserError, ValueError):
    """A checkpoint or encoders file that cannot be loaded; the message is one line naming the file."""


# Encoding: JSON values stand for themselves; everything else is a one-key dict tagged `__kind__`.
def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):  # stored as bytes: safetensors lacks some numpy dtypes (uint32 RNG keys)
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value).view(np.uint8).reshape(-1).copy())
        return {"__ndarray__": path, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        items = [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{path}/{k}") for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors, f"{path}/key{i}"), _encode(v, tensors, f"{path}/{i}")]
                              for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"checkpoint: {path or 'state'} is a {type(value).__name__}, which is neither a tensor, "
                    "an array nor plain data")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        raw = tensors[value["__ndarray__"]].numpy()
        return raw.view(np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _crc32(path: Path) -> str:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _tensors_crc(info: str, tensors: dict[str, torch.Tensor]) -> str:
    """CRC-32 of an encoders file's metadata text and its tensors' bytes, by name."""
    crc = zlib.crc32(info.encode())
    for name in sorted(tensors):
        crc = zlib.crc32(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (nested dicts/lists/tuples of tensors, numpy arrays and plain data) as the
    checkpoint folder `path`, atomically: under `path.partial`, renamed when complete."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        tensors: dict[str, torch.Tensor] = {}
        encoded = _encode(state, tensors, "")
        save_file(tensors, partial / TENSORS)
        _fsync(partial / TENSORS)
        header = {"format": FORMAT, "version": VERSION, "state": encoded,
                  "tensors": {"bytes": (partial / TENSORS).stat().st_size, "crc32": _crc32(partial / TENSORS)}}
        header["crc32"] = json_checksum(header)
        (partial / STATE).write_text(json.dumps(header))
        _fsync(partial / STATE)
        if path.exists():  # the same step saved again (e.g. a resumed run stopped at once)
            shutil.rmtree(path)
        os.replace(partial, path)
        _fsync(path.parent)
    except (OSError, SafetensorError) as err:  # a full disk, a quota: one line naming the checkpoint
        shutil.rmtree(partial, ignore_errors=True)
        raise _write_error(path, err, "the checkpoints before it are kept") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return path


def _write_error(path: Path, err: OSError | SafetensorError, kept: str) -> WriteFailed:
    """A write that failed (safetensors reports the OS error inside its own message), as one line."""
    found = re.search(r"I/O error: (.+?)(?: \(os error \d+\)|$)", str(err))
    reason = err.strerror if isinstance(err, OSError) and err.strerror else found.group(1) if found else str(err)
    return WriteFailed(f"writing {path}: {reason}; nothing partial is left and {kept}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state saved by `save_checkpoint`; CheckpointError (one line naming the file) if the folder is
    incomplete, damaged or not a fastvid checkpoint. Nothing is unpickled."""
    path = Path(path)
    if path.name.endswith(PARTIAL):
        raise CheckpointError(f"{path}: incomplete (its save was interrupted)")
    if not (path / STATE).is_file():
        raise CheckpointError(f"{path}: no {STATE}")
    try:
        header = json.loads((path / STATE).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / STATE}: not JSON ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CheckpointError(f"{path / STATE}: not a fastvid checkpoint (format {FORMAT} {VERSION})")
    if (crc := json_checksum(header)) != header.get("crc32"):
        raise CheckpointError(f"{path / STATE}: checksum {crc}, the file says {header.get('crc32')!r:.20} (damaged)")
    file, recorded = path / TENSORS, header.get("tensors")
    if not (isinstance(recorded, dict) and _is_int(recorded.get("bytes")) and isinstance(recorded.get("crc32"), str)):
        raise CheckpointError(f"{path / STATE}: its \"tensors\" entry is not {{\"bytes\": int, \"crc32\": str}} "
                              f"(got {recorded!r:.80})")
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    if file.stat().st_size != recorded["bytes"]:
        raise CheckpointError(f"{file}: {file.stat().st_size} bytes, {STATE} says {recorded['bytes']}")
    if (crc := _crc32(file)) != recorded["crc32"]:
        raise CheckpointError(f"{file}: checksum {crc}, {STATE} says {recorded['crc32']} (damaged)")
    try:
        tensors = load_file(file)
        return _decode(header["state"], tensors)
    except (SafetensorError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def newest_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest checkpoint under `folder` that loads (names sort by age, as `step_00001000`), its state,
    and one line per newer one skipped (incomplete, damaged). CheckpointError when none loads."""
    found = sorted(Path(folder).glob("step_*"), key=lambda p: p.name.removesuffix(PARTIAL), reverse=True)
    skipped: list[str] = []
    for path in found:
        try:
            return path, load_checkpoint(path), skipped
        except CheckpointError as err:
            skipped.append(str(err))
    detail = f": {'; '.join(skipped)}" if skipped else ""
    raise CheckpointError(f"no complete checkpoint under {folder}{detail}")


def rng_state() -> dict[str, Any]:
    """This process's random generators: Python's, NumPy's, torch's (and CUDA's when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_state(accelerator: Any, model: torch.nn.Module, optimizer: Any, objects: dict[str, Any]) -> dict[str, Any]:
    """What resuming a run needs, as plain data and tensors: the (unwrapped) model, the optimiser, the
    `objects` (each with `state_dict()`), the fp16 loss scaler, and every process's RNG states. Call it
    on every process (the RNG states are gathered); save it from the main one."""
    from accelerate.utils import gather_object

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "objects": {name: obj.state_dict() for name, obj in objects.items()},
             "rng": gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]}
    if getattr(accelerator, "scaler", None) is not None:
        state["scaler"] = accelerator.scaler.state_dict()
    return state


def restore_run_state(accelerator: Any, model: torch.nn.Module, optimizer: Any, objects: dict[str, Any],
                      state: dict[str, Any]) -> None:
    """Load what `run_state` saved into the same objects. Each process takes its own saved RNG states; a
    process that has none (a run resumed with more processes than saved it) is seeded instead with
    `crc32(process 0's saved torch RNG state) + process_index`: deterministic, and distinct from every other
    extra process (not process 0's stream repeated)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for name, obj in objects.items():
        obj.load_state_dict(state["objects"][name])
    if "scaler" in state and getattr(accelerator, "scaler", None) is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    rngs, rank = state["rng"], accelerator.process_index
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    else:
        from accelerate.utils import set_seed

        base = zlib.crc32(rngs[0]["torch"].numpy().tobytes())
        set_seed((base + rank) % 2 ** 32)


def save_encoders(path: str | Path, meta: dict[str, Any], encoders: dict[str, dict[str, Any]]) -> Path:
    """Write `encoders` ({name: Encoder.export()}) and `meta` (plain data: method, config, step) as one
    safetensors file, atomically."""
    path = Path(path)
    tensors = {f"{name}/{key}": t.detach().cpu().contiguous().clone()
               for name, entry in encoders.items() for key, t in entry["state_dict"].items()}
    info = json.dumps({**meta, "encoders": {n: {"arch": e["arch"], "in_channels": e["in_channels"]}
                                            for n, e in encoders.items()}})
    partial = path.with_name(path.name + PARTIAL)
    try:
        save_file(tensors, partial, metadata={"fastvid": info, "crc32": _tensors_crc(info, tensors)})
        _fsync(partial)
        os.replace(partial, path)
    except (OSError, SafetensorError) as err:
        partial.unlink(missing_ok=True)
        raise _write_error(path, err, "the run's checkpoints are kept") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < path.stat().st_size


def load_encoders(path: str | Path) -> dict[str, Any]:
    """{"method", "config", "step", "encoders": {name: {"arch", "in_channels", "state_dict"}}} from a file
    written by `save_encoders`. A pickle (a `torch.save` file) is refused, unread: unpickling can run code."""
    path = Path(path)
    if path.is_dir():  # the run folder, or one of its training checkpoints
        hint = (f"pass {path / 'encoders.pt'}" if (path / "encoders.pt").is_file() else
                "a training checkpoint: pass the encoders.pt its run writes at the end" if (path / STATE).is_file()
                else "pass the encoders.pt a training run writes at the end")
        raise CheckpointError(f"{path}: a folder, not an encoders file; {hint}")
    if not path.is_file():
        raise MissingFile(f"{path}: no such encoders file")
    if not _is_safetensors(path):
        raise CheckpointError(f"{path}: not a safetensors encoders file (a pickle or torch.save file from an older "
                              "fastvid?); it is not loaded, since unpickling can run code")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            info = json.loads(metadata["fastvid"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable encoders file ({err})") from None
    if (crc := _tensors_crc(metadata["fastvid"], tensors)) != metadata.get("crc32"):
        raise CheckpointError(f"{path}: checksum {crc}, the file says {metadata.get('crc32')!r:.20} (damaged)")
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: its metadata is a {type(info).__name__}, not a mapping")
    if not isinstance(info.get("encoders"), dict) or not info["encoders"]:
        raise CheckpointError(f"{path}: lists no encoders")
    for name, entry in info["encoders"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("arch"), str) and _is_int(entry.get("in_channels"))):
            raise CheckpointError(f"{path}: encoder {name!r} is not {{\"arch\": str, \"in_channels\": int}} "
                                  f"(got {entry!r:.80})")
        prefix = f"{name}/"
        entry["state_dict"] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return info
