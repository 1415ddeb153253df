"""Tiny training runs for the tests: clips and crops small enough that a step takes about a second on two cores."""
from pathlib import Path

from fastvid.data.sample import sample_dataset
from fastvid.run_config import RunConfig, load_config

TINY = {
    "video_simclr": ["model.views.frames=4", "model.views.size=32"],
    "video_moco": ["model.views.frames=4", "model.views.size=32", "model.queue_size=16"],
    "cross_and_learn": ["model.views.size=80", "model.views.short_side=96"],
    "gdt": ["model.views.frames=4", "model.views.size=32", "model.views.short_side=40", "data.batch_size=2"],
    "vi2clr": ["model.views.frames=8", "model.views.clip_size=32", "model.views.frame_size=32"],
}
CPU = ["data.batch_size=4", "train.mixed_precision=fp32", "train.device=cpu",
       "train.log_every=1"]


def tiny(method: str, shards: str, out: Path, *extra: str) -> RunConfig:
    """A tiny run of `method` on `shards` (GDT: the sample's clips with sound beside them) into `out`."""
    if method == "gdt":
        shards = str(sample_dataset(Path(shards).parents[2], audio=True))
    return load_config(method, None, [f"data.shards={shards}", f"output={out}", *CPU, *TINY[method], *extra])
