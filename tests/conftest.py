"""Fixtures shared by the trainer's tests: the embedded sample dataset, built once per session."""
from pathlib import Path

import pytest

from fastvid.data.sample import sample_dataset


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory) -> Path:
    """A $FASTVID_CACHE holding the sample dataset as a demo run builds it: all clips, and those with sound."""
    cache = tmp_path_factory.mktemp("cache")
    sample_dataset(cache)
    sample_dataset(cache, audio=True)
    return cache


@pytest.fixture(scope="session")
def shards(sample_cache) -> str:
    return str(sample_dataset(sample_cache))


@pytest.fixture(scope="session")
def audio_shards(sample_cache) -> str:
    return str(sample_dataset(sample_cache, audio=True))
