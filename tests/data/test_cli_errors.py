"""User errors of the data stage end as one line naming the file or value, and exit status 2 — never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidcsl.cli import main

ROOT_OK = "ok"  # a folder holding a valid list dataset, replaced by its path in the arguments


def make_root(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    root = tmp_path / ROOT_OK
    root.mkdir()
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


LIST = {"train.txt": "a.mp4 0\n"}
SSV2 = {"labels/labels.json": json.dumps({"Putting something on a surface": "0"}),
        "labels/train.json": json.dumps([{"id": "7", "template": "Holding [something]"}])}

# case: (files under the root, arguments after "data check", text the message must hold)
CASES = {
    "missing root": ({}, ["{tmp}/nope", "--layout", "list"], "dataset root not found: expected a folder at {tmp}/nope"),
    "root is a file": ({}, ["{root}/train.txt", "--layout", "list"], "expected a folder at {root}/train.txt"),
    "zero frames": (LIST, ["{root}", "--layout", "list", "--num-frames", "0"], "--num-frames must be >= 1, got 0"),
    "negative stride": (LIST, ["{root}", "--layout", "list", "--stride", "-2"], "--stride must be >= 1, got -2"),
    "zero fold": (LIST, ["{root}", "--layout", "ucf101", "--fold", "0"], "--fold must be >= 1, got 0"),
    "nan fps": (LIST, ["{root}", "--layout", "list", "--target-fps", "nan"], "--target-fps must be a positive"),
    "zero verify frames": (LIST, ["{root}", "--layout", "list", "--verify", "--verify-frames", "0"],
                           "--verify-frames must be >= 1, got 0"),
    "escaped path": ({"train.txt": "a.mp4 0\n../../etc/passwd 1\n"}, ["{root}", "--layout", "list"],
                     "{root}/train.txt:2: path '../../etc/passwd' escapes the dataset root {root}"),
    "absolute path elsewhere": ({"train.txt": "/etc/passwd 1\n"}, ["{root}", "--layout", "list"],
                                "{root}/train.txt:1: path '/etc/passwd' escapes"),
    "malformed list line": ({"train.txt": "a.mp4 zero\n"}, ["{root}", "--layout", "list"],
                            "{root}/train.txt:1: expected '<relative/path> <label int>', got 'a.mp4 zero'"),
    "missing list file": (LIST, ["{root}", "--layout", "list", "--list-file", "{root}/other.txt"],
                          "list file not found: expected {root}/other.txt"),
    "empty list": ({"train.txt": "# none yet\n"}, ["{root}", "--layout", "list"], "the split lists no videos"),
    "binary list": ({"train.txt": b"\xff\xfe\x00\x01"}, ["{root}", "--layout", "list"],
                    "{root}/train.txt: not a UTF-8 text file"),
    "missing classInd": (LIST, ["{root}", "--layout", "ucf101"], "UCF101 classInd.txt not found"),
    "unknown split": ({"classInd.txt": "1 A\n"}, ["{root}", "--layout", "ucf101", "--split", "val"],
                      "ucf101 has splits ('train', 'test'), got split 'val'"),
    "kinetics header": ({"train.csv": "file,class\nx.mp4,1\n"}, ["{root}", "--layout", "kinetics"],
                        "{root}/train.csv: header must hold"),
    "ssv2 unknown template": (SSV2, ["{root}", "--layout", "ssv2"],
                              "{root}/labels/train.json: entry 0 (id 7): template 'Holding something' is not in"),
    "no videos in folders": ({"run/notes.txt": "x"}, ["{root}", "--layout", "folder"], "{root}: no videos"),
    "list file for another layout": (LIST, ["{root}", "--layout", "folder", "--list-file", "{root}/train.txt"],
                                     "--list-file has no effect without --layout list"),
    "csv file for another layout": (LIST, ["{root}", "--layout", "list", "--csv-file", "{root}/k.csv"],
                                    "--csv-file has no effect without --layout kinetics"),
    "fold for a layout without folds": (LIST, ["{root}", "--layout", "list", "--fold", "2"],
                                        "--fold has no effect without --layout ucf101 or hmdb51"),
    "verify frames without verify": (LIST, ["{root}", "--layout", "list", "--verify-frames", "4"],
                                     "--verify-frames has no effect without --verify"),
    "corrupt verify record": ({**LIST, "a.mp4": b""}, ["{root}", "--layout", "list", "--verify"],
                              "decord_verify.json: not a decord verify record"),
}


@pytest.mark.parametrize("case", CASES)
def test_data_check_user_error_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    files, argv, expected = CASES[case]
    root = make_root(tmp_path, files)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "decord_verify.json").write_text("not json")  # only the --verify case reads it
    monkeypatch.setenv("VIDCSL_DATA", str(cache))
    fill = lambda s: s.format(tmp=tmp_path, root=root)  # noqa: E731
    rc = main(["data", "check", *map(fill, argv)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("vidcsl data: error: ") and err.count("\n") == 1, err
    assert fill(expected) in err
    assert "Traceback" not in err


def test_the_installed_command_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "vidcsl", "data", "check", str(tmp_path / "nope"), "--layout",
                           "list"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"vidcsl data: error: dataset root not found: expected a folder at {tmp_path}/nope"
