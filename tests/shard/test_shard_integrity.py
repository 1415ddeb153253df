"""Damaged shards: per-member checksums, `fastvid info --verify`, and a rerun of `fastvid shard` that
redoes exactly the samples of a missing, truncated or altered shard (issue 14)."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from fastvid.cli import main
from fastvid.shard import read_manifest
from fastvid.shard.info import check, verify
from fastvid.shard.integrity import checksum, verify_member, verify_tar
from tests.clips import write_marked_clip
from tests.shard.media import read_tar
from tests.shard.test_shard_dataset import assert_identical_shards, shard


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for label in ("jump", "walk"):
        for i in range(3):
            write_marked_clip(root / label / f"v_{label}_g0{i}.mp4", 6 + i, height=48, width=64, gop=4)
    return root


@pytest.fixture(scope="module", params=["h264", "vp9"])
def reference(request: pytest.FixtureRequest, src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shards of two samples, never touched: tests copy them."""
    out = tmp_path_factory.mktemp(f"ref-{request.param}")
    shard(src, out, max_samples=2, codec=request.param, audio=False)
    return out


def copy(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference, out)  # copy2 keeps mtimes: the rerun's cheap check trusts unchanged tars
    return out


def members(out: Path, tar: str) -> dict[str, tuple[int, int]]:
    """{member name: (offset, size)} from the shard's DALI index."""
    found = {}
    for line in (out / tar).with_suffix(".idx").read_text().splitlines()[1:]:
        fields = line.split()
        found.update({n: (int(o), int(z)) for o, z, n in zip(fields[1::4], fields[2::4], fields[3::4])})
    return found


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def rerun(src: Path, out: Path, codec: str) -> object:
    return shard(src, out, max_samples=2, codec=codec, audio=False)


def test_checksums_recorded_and_verify_member() -> None:
    assert checksum(b"fastvid") == checksum(b"fastvid") != checksum(b"fastvie")
    recorded = [7, checksum(b"fastvid")]
    assert verify_member("k.mp4", b"fastvid", recorded) is None
    assert "6 bytes, recorded 7" in verify_member("k.mp4", b"fastvi", recorded)
    assert "checksum" in verify_member("k.mp4", b"fastvie", recorded)


def _cut_tar(path: Path, members: dict[str, bytes], keep: int) -> None:
    """The first `keep` bytes of a tar of `members`, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue()[:keep])


def test_verify_tar_reports_a_cut_once_whatever_the_member_names(tmp_path: Path) -> None:
    data = b"x" * 2000
    keep = 512 + 2048 + 512 + 1000  # the first member (header, padded data), the second's header, half its data
    sums = {"a.json": [len(data), checksum(data)], "b.mp4": [len(data), checksum(data)]}
    # The tar ends inside b.mp4: one line for it, not a second one for the tar.
    _cut_tar(tmp_path / "t.tar", {"a.json": data, "b.mp4": data}, keep)
    problems = verify_tar(tmp_path / "t.tar", sums)
    assert len(problems) == 1 and problems[0].startswith("t.tar:b.mp4: unreadable"), problems
    # An unrecorded member named "unreadable..." cut short: the cut is still reported.
    _cut_tar(tmp_path / "u.tar", {"a.json": data, "unreadable.mp4": data}, keep)
    problems = verify_tar(tmp_path / "u.tar", {"a.json": sums["a.json"]})
    assert problems[0] == "u.tar:unreadable.mp4: not recorded in dataset.json"
    assert len(problems) == 2 and problems[1].startswith("u.tar: unreadable tar"), problems


def test_dataset_json_holds_every_members_size_and_checksum(reference: Path) -> None:
    manifest = read_manifest(reference)
    for s in manifest["shards"]:
        assert s["members"] == {name: [len(data), checksum(data)]
                                for key, files in read_tar(Path(s["tar"])).items()
                                for name, data in ((f"{key}.{ext}", d) for ext, d in files.items())}
    assert verify(reference) == []


def test_info_verify_names_each_bad_member(reference: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = copy(reference, tmp_path)
    assert main(["info", "--verify", str(out)]) == 0
    assert "every member matches its checksum" in capsys.readouterr().out
    # Flipped bytes inside a video member (same size: only the checksum can tell), and garbage json.
    video = sorted(n for n in members(out, "train-000000.tar") if n.endswith(".mp4"))[0]
    offset, size = members(out, "train-000000.tar")[video]
    flip(out / "train-000000.tar", offset + size // 2)
    meta = sorted(n for n in members(out, "train-000001.tar") if n.endswith(".json"))[0]
    offset, size = members(out, "train-000001.tar")[meta]
    with (out / "train-000001.tar").open("r+b") as f:
        f.seek(offset)
        f.write(b"\x00garbage" + b"}" * (size - 8))
    # Cut inside the last member's data: that member is short, nothing after it is lost.
    last = max(members(out, "train-000002.tar").items(), key=lambda kv: kv[1][0])
    (out / "train-000002.tar").write_bytes((out / "train-000002.tar").read_bytes()[: last[1][0] + last[1][1] // 2])
    assert main(["info", "--verify", str(out)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem:")]
    assert f"problem: train-000000.tar:{video}: checksum" in "\n".join(lines)
    assert f"problem: train-000001.tar:{meta}: checksum" in "\n".join(lines)
    assert any(line.startswith(f"problem: train-000002.tar:{last[0]}:") for line in lines)
    assert all(len(line) < 300 for line in lines)
    # Without --verify, the flipped video goes unnoticed (same size, same index), the rest does not.
    assert main(["info", str(out)]) == 1
    assert video not in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["deleted", "truncated-in-member", "truncated-past-index", "flipped"])
def test_rerun_redoes_exactly_the_damaged_shard(reference: Path, src: Path, tmp_path: Path, damage: str) -> None:
    codec = read_manifest(reference)["options"]["codec"]
    out = copy(reference, tmp_path)
    tar = out / "train-000001.tar"
    if damage == "deleted":
        tar.unlink()
    elif damage == "truncated-in-member":
        last = max(members(out, tar.name).values())
        tar.write_bytes(tar.read_bytes()[: last[0] + last[1] // 2])
    elif damage == "truncated-past-index":  # the members are whole, the tar's end blocks are gone
        tar.write_bytes(tar.read_bytes()[: (sum(max(members(out, tar.name).values())) + 511) // 512 * 512])
    else:
        offset, size = members(out, tar.name)[sorted(n for n in members(out, tar.name) if n.endswith(".mp4"))[0]]
        flip(tar, offset + size // 2)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p != tar}
    summary = rerun(src, out, codec)
    assert summary.redone == [line for line in summary.redone if line.startswith("train-000001.tar: ")] != []
    assert "redone: train-000001.tar" in summary.format()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p != tar} == kept  # the others kept
    for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000001.idx"):
        assert_identical_shards(out / name, reference / name)  # the same bytes as the undamaged run
    manifest = read_manifest(out)
    assert [Path(s["tar"]).name for s in manifest["shards"]] == [f"train-00000{i}.tar" for i in range(3)]
    keys = [k for s in manifest["shards"] for k in read_tar(Path(s["tar"]))]
    assert sorted(keys) == sorted(f"{c}_v_{c}_g0{i}" for c in ("jump", "walk") for i in range(3))  # each once
    assert check(out) == [] and verify(out) == [] and summary.samples == 6
    assert rerun(src, out, codec).redone == []  # the redone shard is trusted from now on


def test_missing_index_is_rewritten_not_redone(reference: Path, src: Path, tmp_path: Path) -> None:
    out = copy(reference, tmp_path)
    (out / "train-000002.idx").unlink()
    before = (out / "train-000002.tar").stat().st_mtime_ns
    summary = rerun(src, out, read_manifest(reference)["options"]["codec"])
    assert summary.redone == ["train-000002.idx: rewritten from train-000002.tar (it was missing)"]
    assert (out / "train-000002.tar").stat().st_mtime_ns == before
    assert (out / "train-000002.idx").read_text() == (reference / "train-000002.idx").read_text()


def test_redo_after_an_interrupted_run_numbers_new_shards_after_the_last(reference: Path, src: Path,
                                                                         tmp_path: Path) -> None:
    """The journal lost its last shard (an interrupted run) and shard 0 was deleted: shard 0 is redone
    under its name, the unfinished samples become shard 2, and nothing is written twice."""
    out = copy(reference, tmp_path)
    journal = out / ".progress.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:3]))  # header + shards 0, 1
    for name in ("train-000002.tar", "train-000002.idx", "dataset.json"):
        (out / name).unlink()
    (out / "train-000000.tar").unlink()
    summary = rerun(src, out, read_manifest(reference)["options"]["codec"])
    assert [line.split(":")[0] for line in summary.redone] == ["train-000000.tar"]
    for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar"):
        assert_identical_shards(out / name, reference / name)
    assert check(out) == [] and summary.samples == 6
    assert json.loads((out / "dataset.json").read_text())["shards"] == \
        json.loads((reference / "dataset.json").read_text())["shards"]


def test_redone_shard_keeps_its_repaired_samples(tmp_path: Path) -> None:
    """A repaired sample (kept with a note) of a damaged shard is redone like any other, not taken for a
    failure that stays failed: all samples come back, each note listed once (issue 21, item 1)."""
    src = tmp_path / "src"
    for i in range(4):  # v1, v3: an odd frame size, made even (a repair)
        write_marked_clip(src / "c" / f"v{i}.mkv", 6, height=48 + i % 2, width=64 + i % 2, codec="ffv1")
    reference, out = tmp_path / "ref", tmp_path / "out"
    shard(src, reference, max_samples=2)
    shutil.copytree(reference, out)
    (out / "train-000001.tar").unlink()
    summary = shard(src, out, max_samples=2)
    assert summary.samples == 4 and summary.repaired == {"odd-size": 2}
    for name in ("train-000000.tar", "train-000001.tar"):
        assert_identical_shards(out / name, reference / name)
    assert (out / "errors.jsonl").read_text() == (reference / "errors.jsonl").read_text()
    assert check(out) == [] and verify(out) == []
