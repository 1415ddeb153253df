"""The checksum of the JSON documents fastvid writes and later trusts (dataset.json, a checkpoint's
state.json); a leaf module, so that the checkpoint code need not import the shard code, nor the reverse."""
from __future__ import annotations

import json
import zlib


def json_checksum(document: dict) -> str:
    """CRC-32 of `document` without its own "crc32" key, in one canonical spelling: stored under "crc32",
    it catches a changed digit or key (JSON has no room for a checksum of the file's own bytes)."""
    body = {k: v for k, v in document.items() if k != "crc32"}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}"
