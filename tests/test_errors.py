"""Errors by type: the CLI prints a `UserError` as one line (exit 2) and lets any other exception, a bug, keep its
traceback; checkpoint retention keeps the newest `train.keep_checkpoints` (0: only the last)."""
import pytest

from fastvid import cli
from fastvid.errors import InputError, UserError
from fastvid.train import prune_checkpoints


@pytest.mark.parametrize("error", [ValueError("an internal check failed"), OSError("internal"),
                                   KeyError("x")])
def test_an_internal_error_keeps_its_traceback(error, monkeypatch, tmp_path):
    def fail(run):
        raise error

    monkeypatch.setattr("fastvid.plot.plot_run", fail)
    with pytest.raises(type(error)):
        cli.main(["plot", str(tmp_path)])


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    def fail(run):
        raise InputError(f"{run}: first line\nsecond line")

    monkeypatch.setattr("fastvid.plot.plot_run", fail)
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"fastvid plot: error: {tmp_path}: first line; second line\n"
    assert issubclass(InputError, UserError) and issubclass(InputError, ValueError)


@pytest.mark.parametrize("keep, kept", [(0, [5]), (1, [5]), (2, [4, 5]), (9, [1, 2, 3, 4, 5])])
def test_keep_checkpoints_keeps_the_newest_and_never_none(keep, kept, tmp_path):
    for step in range(1, 6):
        (tmp_path / f"step_{step:08d}").mkdir()
    (tmp_path / "step_00000006.partial").mkdir()  # a save that was killed
    prune_checkpoints(tmp_path, keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step_{s:08d}" for s in kept]
