"""``data check --verify``: decord vs PyAV on sampled frames, the record it keeps, and the reader consulting it."""

from __future__ import annotations

import json
import os

import pytest

from vidcsl.cli import main
from vidcsl.data import trust, verify
from vidcsl.data.trust import load_record, record_path, recorded_misread, update_record
from vidcsl.data.verify import sample_indices, verify_video
from vidcsl.data.video import open_video
from vidcsl.errors import DataError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A private cache folder, so the record of these tests is not the user's."""
    monkeypatch.setenv("VIDCSL_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def files(tmp_path_factory, make_video):
    d = tmp_path_factory.mktemp("verify")
    return {"mp4": make_video(d / "good.mp4", 40, gop=8),
            "avi": make_video(d / "h264.avi", 40, gop=8, bframes=0),
            "raw": make_video(d / "raw.h264", 40, gop=8, fmt="h264")}


def test_sample_indices_cover_both_ends_in_random_order():
    idx = sample_indices(100, 8, seed=3)
    assert len(set(idx)) == 8 and {0, 99} <= set(idx) and idx != sorted(idx)
    assert sorted(sample_indices(5, 8)) == [0, 1, 2, 3, 4]
    assert idx == sample_indices(100, 8, seed=3)


def test_verify_reports_agreement_and_what_decord_got_wrong(files, bad_videos):
    ok = verify_video(str(files["mp4"]))
    assert (ok["status"], ok["reason"], ok["rule"]) == ("agree", "", None)
    avi = verify_video(str(files["avi"]), frames=12)
    assert avi["status"] == "disagree" and avi["rule"].startswith("AVI")
    assert avi["reason"].startswith("wrong frames (") and "->" in avi["reason"]  # names a frame decord returned
    raw = verify_video(str(files["raw"]))
    assert raw["status"] == "disagree" and raw["rule"].startswith("no timestamps")
    assert "decord cannot open it (DECORDError: Failed to measure duration" in raw["reason"]
    bad = verify_video(str(bad_videos["zero"]))
    assert (bad["status"], bad["reason"]) == ("bad", "empty file (0 bytes)")


def test_record_round_trip_applies_only_to_the_unchanged_file(cache, files, tmp_path):
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(files["mp4"].read_bytes())
    assert recorded_misread(copy) is None  # no record yet
    path = update_record({str(copy): "wrong frames (1 of 8): 3 -> 4"})
    assert path == record_path() == cache / "decord_verify.json"
    assert recorded_misread(copy) == "verified: wrong frames (1 of 8): 3 -> 4"
    assert recorded_misread(tmp_path / "link.mp4") is None
    os.symlink(copy, tmp_path / "link.mp4")
    assert recorded_misread(tmp_path / "link.mp4") is not None  # keyed by the real path
    copy.write_bytes(files["mp4"].read_bytes() + b"\0")  # the file changed since it was verified
    assert recorded_misread(copy) is None
    update_record({str(copy): None})  # verified again, now agreeing: the entry goes
    assert load_record() == {}


def test_a_corrupt_record_is_named(cache, files):
    cache.mkdir(parents=True)
    (cache / "decord_verify.json").write_text("{]")
    with pytest.raises(DataError, match=r"decord_verify\.json: not a decord verify record"):
        recorded_misread(files["mp4"])
    (cache / "decord_verify.json").write_text(json.dumps({"version": 99, "files": {}}))
    with pytest.raises(DataError, match="version 99"):
        load_record()


def test_verify_command_records_a_misread_the_rules_miss_and_the_dataset_then_reads_it_right(
        cache, files, frame_index, tmp_path, monkeypatch, capsys):
    """Pretend the rules did not know AVI: decord then reads the file (wrongly) until --verify records it."""
    no_rules = lambda facts: None  # noqa: E731
    monkeypatch.setattr("vidcsl.data.video.decord_misreads", no_rules)
    monkeypatch.setattr(verify, "decord_misreads", no_rules)
    root = tmp_path / "ds"
    root.mkdir()
    for name in ("h264.avi", "good.mp4"):
        (root / name).write_bytes(files["avi" if name.endswith("avi") else "mp4"].read_bytes())
    (root / "train.txt").write_text("h264.avi 0\ngood.mp4 1\n")
    idx = [30, 2, 17, 9]
    with open_video(root / "h264.avi") as reader:
        assert reader.delegated is None and frame_index(reader.get_frames(idx)) != idx  # the silent failure
    assert main(["data", "check", str(root), "--layout", "list", "--verify", "--verify-frames", "12"]) == 0
    out = capsys.readouterr().out
    assert "of each of 2 readable videos: 1 disagree" in out and str(cache / "decord_verify.json") in out
    assert f"| {root / 'h264.avi'} | wrong frames (" in out and "| not caught by the rules |" in out
    assert list(load_record()) == [str(root / "h264.avi")]
    with open_video(root / "h264.avi") as reader:
        assert reader.delegated.startswith("verified: wrong frames")
        assert frame_index(reader.get_frames(idx)) == idx
    with open_video(root / "good.mp4") as reader:
        assert reader.delegated is None


def test_check_summarises_which_files_the_decord_backend_hands_to_pyav(cache, files, tmp_path, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    for key, name in (("avi", "a.avi"), ("raw", "b.h264"), ("mp4", "c.mp4")):
        (root / name).write_bytes(files[key].read_bytes())
    (root / "train.txt").write_text("a.avi 0\nb.h264 0\nc.mp4 1\n")
    assert main(["data", "check", str(root), "--layout", "list", "--backend", "decord"]) == 0
    out = capsys.readouterr().out
    assert "decord backend: 2 of 3 files are read with PyAV: " in out
    assert "AVI (1)" in out and "no timestamps (1)" in out
    assert trust.record_path().exists() is False  # a plain check writes no record
