"""`fastvid shard`: a folder of videos (or a manifest) -> reproducible WebDataset tar shards for DALI."""
from fastvid.shard.config import ShardConfig
from fastvid.shard.run import ShardSummary, read_manifest, shard_dataset

__all__ = ["ShardConfig", "ShardSummary", "read_manifest", "shard_dataset"]
