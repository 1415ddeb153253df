"""The five self-supervised methods, by the name used on the command line and in configs/<name>.yaml.

METHODS maps a name to "module:Class"; `get_method` imports only the one asked for, so a method's
heavier dependencies (clustering, audio) load only when it runs.
"""
from __future__ import annotations

import importlib

from fastvid.methods.base import Method, OptimConfig

METHODS: dict[str, str] = {
    "cross_and_learn": "fastvid.methods.cross_and_learn:CrossAndLearn",
    "video_simclr": "fastvid.methods.video_simclr:VideoSimCLR",
    "video_moco": "fastvid.methods.video_moco:VideoMoCo",
    "gdt": "fastvid.methods.gdt:GDT",
    "vi2clr": "fastvid.methods.vi2clr:Vi2CLR",
}


def get_method(name: str) -> type[Method]:
    """The Method subclass registered as `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["METHODS", "Method", "OptimConfig", "get_method"]
