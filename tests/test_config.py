"""The strict config loader: unknown keys and wrong types fail at load time, overrides are typed."""
from dataclasses import dataclass, field

import pytest

from fastvid.config import ConfigError, apply_overrides, check_key, from_dict, load_yaml


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


def test_unknown_key_suggests_the_closest_one():
    with pytest.raises(ConfigError, match=r"^unknown key inner\.lrr; did you mean inner\.lr\?$") as err:
        from_dict(Outer, {"inner": {"lrr": 0.1}})
    assert err.value.key == "inner.lrr"
    with pytest.raises(ConfigError, match=r"unknown key inner\.zzz \(known: lr, steps\)"):
        from_dict(Outer, {"inner": {"zzz": 0.1}})


def test_override_keys_are_checked_against_the_schema():
    schema = {"name": str, "inner": Inner, "maybe": Inner | None}
    check_key(schema, ["inner", "lr"], "inner.lr=1")
    check_key(schema, ["maybe", "steps"], "maybe.steps=[1]")
    with pytest.raises(ConfigError, match=r"^override inner\.lrr=1: unknown key inner\.lrr; did you mean inner\.lr\?$"):
        check_key(schema, ["inner", "lrr"], "inner.lrr=1")
    with pytest.raises(ConfigError, match=r"^override inenr\.lr=1: unknown key inenr; did you mean inner\?$"):
        check_key(schema, ["inenr", "lr"], "inenr.lr=1")
    with pytest.raises(ConfigError, match=r"override name\.x=1: name is a value, not a section"):
        check_key(schema, ["name", "x"], "name.x=1")


def test_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\nb: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML: .* at line \d+, column \d+$"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match=r"^override 'a=\[1,': the value is not valid YAML"):
        apply_overrides({}, ["a=[1,"])


@dataclass
class Checked:
    size: int = 1
    other: int = 0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"model.size: must be >= 1, got {self.size}")  # no key, as method configs raise
        if self.other < 0:
            raise ConfigError("other must not be negative")


@dataclass
class Holder:
    inner: Checked = field(default_factory=Checked)


def test_a_post_init_error_without_a_key_gets_the_key_it_came_from():
    with pytest.raises(ConfigError, match=r"^model\.size: must be >= 1, got 0$") as err:
        from_dict(Checked, {"size": 0}, "model")
    assert err.value.key == "model.size"
    with pytest.raises(ConfigError) as err:  # a message that names no field: the section
        from_dict(Checked, {"other": -1}, "model")
    assert err.value.key == "model"
    with pytest.raises(ConfigError) as err:  # nested: the dotted path from the top
        from_dict(Holder, {"inner": {"size": 0}}, "model")
    assert err.value.key == "model.inner"
    assert from_dict(Checked, {}, "model") == Checked()


def test_a_method_config_check_blames_the_override():
    from fastvid.run_config import load_config

    with pytest.raises(ConfigError) as err:
        load_config("video_moco", None, ["model.temperature=0.1", "model.bn_splits=0", "train.max_steps=3"])
    assert str(err.value) == "override model.bn_splits=0: model.bn_splits: must be >= 1, got 0"
    assert err.value.key == "model.bn_splits"


@pytest.mark.parametrize("method", ["video_simclr", "vi2clr"])
def test_an_inverted_crop_range_names_its_override(method):
    from fastvid.data.views import vi2clr_views, video_simclr_views
    from fastvid.run_config import load_config

    with pytest.raises(ConfigError, match=r"^override model\.views\.crop_scale=\[0\.9,0\.2\]: .*0 < low <= high <= 1"):
        load_config(method, None, ["model.views.crop_scale=[0.9,0.2]"])
    views = load_config(method, None, ["model.views.crop_scale=[0.5,1.0]"]).model.views
    specs = (vi2clr_views if method == "vi2clr" else video_simclr_views)(views)
    assert {v.spatial.scale for v in specs} == {(0.5, 1.0)}  # every view's crop draw
