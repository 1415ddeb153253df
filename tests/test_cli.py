"""The `fastvid` command itself: --version, defaults in every --help, one-line argument errors, one spelling of
the output option, and nothing created by a command that fails on its input."""
import argparse
import subprocess
import sys

import pytest

from fastvid import __version__
from fastvid.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_version():
    done = subprocess.run([sys.executable, "-m", "fastvid.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"fastvid {__version__}"


@pytest.mark.parametrize("command", ["train", "shard", "info", "eval", "plot"])
def test_every_option_shows_its_default(command):
    parser = _subcommands()[command]
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.nargs == 0:
            continue  # positionals, hidden aliases, switches
        help_text = parser._get_formatter()._expand_help(action)
        assert "default" in help_text or "required" in help_text or action.required, (command, action.dest)
    assert "--out " not in text  # the old spelling stays hidden


def test_output_is_the_one_spelling_and_out_still_works():
    for command in ("train", "eval"):
        assert "--output" in _subcommands()[command].format_help()
    args = build_parser().parse_args(["eval", "--checkpoint", "c.pt", "--probe", "motion", "--out", "old"])
    assert args.output == "old"


def test_argument_errors_are_one_line_with_the_closest_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--method", "gdt", "--max-stesp", "3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "did you mean --max-steps?" in err


def test_shard_of_a_missing_source_creates_nothing(tmp_path, capsys):
    assert main(["shard", str(tmp_path / "nonexistent"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"fastvid shard: error: {tmp_path / 'nonexistent'}: no such folder of " \
                                              f"videos or manifest"
    assert not (tmp_path / "out").exists()
