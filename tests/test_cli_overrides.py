"""`key=value` overrides anywhere on `fastvid train`'s command line, in their order (issue 14)."""
from __future__ import annotations

import pytest

from fastvid.cli import main, parse


@pytest.mark.parametrize("argv", [
    ["train", "--method", "gdt", "a=1", "b=2"],
    ["train", "a=1", "--method", "gdt", "b=2"],  # before a flag
    ["train", "--method", "gdt", "a=1", "--max-steps", "2", "b=2"],  # on both sides of a flag
])
def test_overrides_anywhere_keep_their_order(argv: list[str]) -> None:
    assert parse(argv).overrides == ["a=1", "b=2"]


def test_other_stray_arguments_are_still_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["train", "--method", "gdt", "a=1", "--max-stepz", "2"])
    assert exit_.value.code == 2 and "unrecognized arguments: --max-stepz 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["shard", "src", "out", "a=1"])  # only train takes overrides


def test_an_override_before_a_flag_reaches_the_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "optim.lrr=0.1", "--method", "video_simclr", "--device", "cpu"]) == 2
    assert "did you mean optim.lr?" in capsys.readouterr().err
