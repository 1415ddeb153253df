"""The strict config loader: unknown keys and wrong types fail at load time, overrides are typed."""
from dataclasses import dataclass, field

import pytest

from fastvid.config import ConfigError, apply_overrides, from_dict


@dataclass
class Inner:
    lr: float = 0.1
    steps: tuple[int, ...] = (10, 20)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    mode: str | None = None


def test_nested_values_and_int_to_float():
    cfg = from_dict(Outer, {"name": "y", "inner": {"lr": 1, "steps": [5]}, "flag": True})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == (5,)
    assert cfg.flag is True


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"inner\.lrr"):
        from_dict(Outer, {"inner": {"lrr": 0.1}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"inner\.lr: expected float"):
        from_dict(Outer, {"inner": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="flag"):
        from_dict(Outer, {"flag": 1})


def test_overrides_are_parsed_as_yaml():
    data = apply_overrides({"inner": {"lr": 0.1}}, ["inner.lr=1e-3", "flag=true", "mode=null"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.lr == pytest.approx(1e-3)
    assert cfg.flag is True and cfg.mode is None
