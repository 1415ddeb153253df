"""fastvid.data: a DALI video loader that serves every method's views from `fastvid shard` shards."""
from fastvid.data.loader import LoaderError, VideoLoader, build_loader
from fastvid.data.spec import AudioSpec, DataConfig, SpatialSpec, TemporalSpec, ViewSpec

__all__ = ["AudioSpec", "DataConfig", "LoaderError", "SpatialSpec", "TemporalSpec", "VideoLoader", "ViewSpec",
           "build_loader"]
