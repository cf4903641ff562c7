"""Dataset layouts: mini UCF101 / HMDB51 / Kinetics / list / folder trees with placeholder files."""

import os
from pathlib import Path

import pytest

from vidcsl.data.layouts import read_split, resolve_under, ssv2_class_name
from vidcsl.errors import DataError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def ucf(tmp_path):
    for rel in ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g08_c01.avi",
                "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "HandstandPushups/v_HandStandPushups_g01_c01.avi"]:
        touch(tmp_path / rel)
    splits = tmp_path / "ucfTrainTestlist"
    write(splits / "classInd.txt", "1 ApplyEyeMakeup\n2 HandStandPushups\n")
    write(splits / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                      "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\n")
    write(splits / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                                     "HandstandPushups/v_HandStandPushups_g01_c01.avi\n")
    return tmp_path


def test_ucf101_train_labels_are_zero_based_and_test_labels_come_from_the_folder(ucf):
    train, names = read_split("ucf101", ucf, split="train", fold=1)
    assert names == ["ApplyEyeMakeup", "HandStandPushups"]
    assert train == [(str(ucf / "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"), 0),
                     (str(ucf / "HandstandPushups/v_HandStandPushups_g08_c01.avi"), 1)]
    test, _ = read_split("ucf101", ucf, split="test", fold=1)
    assert [y for _, y in test] == [0, 1]  # folder "HandstandPushups" matches class "HandStandPushups"
    assert all(os.path.isabs(p) and os.path.isfile(p) for p, _ in test)


def test_ucf101_missing_split_file_names_the_expected_path(ucf):
    with pytest.raises(DataError, match=r"trainlist02\.txt"):
        read_split("ucf101", ucf, split="train", fold=2)


def test_ucf101_path_escaping_root_is_rejected_with_file_and_line(ucf):
    write(ucf / "ucfTrainTestlist/trainlist03.txt", "ApplyEyeMakeup/ok.avi 1\n../../etc/passwd 1\n")
    with pytest.raises(DataError, match=r"trainlist03\.txt:2: path '\.\./\.\./etc/passwd' escapes"):
        read_split("ucf101", ucf, split="train", fold=3)


def test_absolute_paths_are_allowed_inside_root_only(tmp_path):
    inside = str(tmp_path / "a" / "b.mp4")
    assert resolve_under(tmp_path, inside, "list.txt", 1) == inside
    with pytest.raises(DataError, match="list.txt:4"):
        resolve_under(tmp_path / "a", str(tmp_path / "other.mp4"), "list.txt", 4)
    with pytest.raises(DataError, match="escapes"):
        resolve_under(tmp_path, "a/../../x.mp4", "list.txt", 1)


def test_hmdb51_split_tags_select_train_and_test(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    write(splits / "brush_hair_test_split1.txt", "bh_a.avi 1\nbh_b.avi 2\nbh_c.avi 0\n")
    write(splits / "cartwheel_test_split1.txt", "cw_a.avi 2 \ncw_b.avi 1\n")
    write(splits / "cartwheel_test_split2.txt", "cw_a.avi 1\n")
    train, names = read_split("hmdb51", tmp_path, split="train", fold=1)
    assert names == ["brush_hair", "cartwheel"]
    assert train == [(str(tmp_path / "brush_hair/bh_a.avi"), 0), (str(tmp_path / "cartwheel/cw_b.avi"), 1)]
    test, _ = read_split("hmdb51", tmp_path, split="test", fold=1)
    assert test == [(str(tmp_path / "brush_hair/bh_b.avi"), 0), (str(tmp_path / "cartwheel/cw_a.avi"), 1)]
    with pytest.raises(DataError, match=r"_test_split3\.txt"):
        read_split("hmdb51", tmp_path, fold=3)
    write(splits / "cartwheel_test_split1.txt", "cw_a.avi 5\n")
    with pytest.raises(DataError, match=r"cartwheel_test_split1\.txt:1"):
        read_split("hmdb51", tmp_path, fold=1)


def test_kinetics_standard_csv_finds_files_and_filters_the_split(tmp_path):
    touch(tmp_path / "air drumming/abc_000010_000020.mp4")
    touch(tmp_path / "abseiling/xyz_000000_000010.mp4")
    csv_file = write(tmp_path / "k.csv", "label,youtube_id,time_start,time_end,split\n"
                                         "air drumming,abc,10,20,train\n"
                                         "abseiling,xyz,0,10,train\n"
                                         "abseiling,val1,5,15,val\n")
    train, names = read_split("kinetics", tmp_path, split="train", csv_file=csv_file)
    assert names == ["abseiling", "air drumming"]
    assert train == [(str(tmp_path / "air drumming/abc_000010_000020.mp4"), 1),
                     (str(tmp_path / "abseiling/xyz_000000_000010.mp4"), 0)]
    val, _ = read_split("kinetics", tmp_path, split="validate", csv_file=csv_file)
    assert val == [(str(tmp_path / "abseiling/val1_000005_000015.mp4"), 0)]  # missing files stay listed
    with pytest.raises(DataError, match="splits present"):
        read_split("kinetics", tmp_path, split="test", csv_file=csv_file)
    with pytest.raises(DataError, match="none of the 1 listed videos exists"):
        read_split("kinetics", tmp_path, split="val", csv_file=csv_file, drop_missing=True)
    touch(tmp_path / "abseiling/other_000001_000011.mp4")
    with open(csv_file, "a") as fh:
        fh.write("abseiling,other,1,11,val\n")
    with pytest.warns(RuntimeWarning, match="1 of 2 listed videos are missing"):
        val, _ = read_split("kinetics", tmp_path, split="val", csv_file=csv_file, drop_missing=True)
    assert val == [(str(tmp_path / "abseiling/other_000001_000011.mp4"), 0)]


def test_kinetics_finds_videos_in_split_folders_flat_or_by_label(tmp_path):
    """Common downloads keep each split in its own folder, with or without label folders."""
    touch(tmp_path / "train/air drumming/abc_000010_000020.mp4")
    touch(tmp_path / "val/xyz_000000_000010.mp4")
    csv_file = write(tmp_path / "k.csv", "label,youtube_id,time_start,time_end,split\n"
                                         "air drumming,abc,10,20,train\nabseiling,xyz,0,10,val\n")
    assert read_split("kinetics", tmp_path, csv_file=csv_file)[0] == \
        [(str(tmp_path / "train/air drumming/abc_000010_000020.mp4"), 0)]
    assert read_split("kinetics", tmp_path, split="validate", csv_file=csv_file)[0] == \
        [(str(tmp_path / "val/xyz_000000_000010.mp4"), 0)]


def test_kinetics_simple_path_label_csv(tmp_path):
    write(tmp_path / "train.csv", "path,label\nv/a.mp4,2\nv/b.mp4,0\n")
    samples, names = read_split("kinetics", tmp_path)  # default CSV: root/<split>.csv
    assert samples == [(str(tmp_path / "v/a.mp4"), 2), (str(tmp_path / "v/b.mp4"), 0)]
    assert names == ["0", "1", "2"]
    write(tmp_path / "bad.csv", "file,class\nv/a.mp4,2\n")
    with pytest.raises(DataError, match="header must hold"):
        read_split("kinetics", tmp_path, csv_file=tmp_path / "bad.csv")
    write(tmp_path / "esc.csv", "path,label\nv/a.mp4,x\n/etc/passwd,y\n")
    with pytest.raises(DataError, match=r"esc\.csv:3"):
        read_split("kinetics", tmp_path, csv_file=tmp_path / "esc.csv")


def test_list_layout_allows_spaces_and_reads_class_names(tmp_path):
    lst = write(tmp_path / "train.txt", "# comment\nclips/my clip.mp4 1\nclips/b.mp4 0\n\n")
    samples, names = read_split("list", tmp_path, list_file=lst)
    assert samples == [(str(tmp_path / "clips/my clip.mp4"), 1), (str(tmp_path / "clips/b.mp4"), 0)]
    assert names == ["0", "1"]
    write(tmp_path / "classes.txt", "walk\nrun\n")
    assert read_split("list", tmp_path)[1] == ["walk", "run"]
    write(tmp_path / "train.txt", "clips/b.mp4 zero\n")
    with pytest.raises(DataError, match=r"train\.txt:1: expected"):
        read_split("list", tmp_path)
    with pytest.raises(DataError, match=r"test\.txt"):
        read_split("list", tmp_path, split="test")


def test_folder_layout_uses_sorted_class_folders_and_video_files_only(tmp_path):
    touch(tmp_path / "train/run/a.mp4")
    touch(tmp_path / "train/run/notes.txt")
    touch(tmp_path / "train/jump/sub/b.AVI")
    samples, names = read_split("folder", tmp_path, split="train")
    assert names == ["jump", "run"]
    assert samples == [(str(tmp_path / "train/jump/sub/b.AVI"), 0), (str(tmp_path / "train/run/a.mp4"), 1)]


def test_unknown_layout_and_missing_root(tmp_path):
    with pytest.raises(DataError, match="layout must be one of"):
        read_split("imagenet", tmp_path)
    with pytest.raises(DataError, match="dataset root not found"):
        read_split("folder", tmp_path / "nope")


# -- Something-Something v2 -------------------------------------------------------------------------------
def ssv2_tree(root: Path, *, official_names: bool = False) -> Path:
    labels = {"Holding something next to something": "0", "Putting something on a surface": "1",
              "Pushing something from left to right": "2"}
    train = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
              "template": "Holding [something] next to [something]", "placeholders": ["potato", "bottle"]},
             {"id": "42326", "label": "putting a cup on a surface", "template": "Putting [something] on a surface",
              "placeholders": ["a cup"]}]
    val = [{"id": "1", "label": "pushing a pen from left to right",
            "template": "Pushing [something] from left to right", "placeholders": ["a pen"]}]
    prefix = "something-something-v2-" if official_names else ""
    import json

    write(root / "labels" / f"{prefix}labels.json", json.dumps(labels))
    write(root / "labels" / f"{prefix}train.json", json.dumps(train))
    write(root / "labels" / f"{prefix}validation.json", json.dumps(val))
    return root


@pytest.mark.parametrize("official_names", [False, True])
def test_ssv2_labels_come_from_the_template_without_brackets(tmp_path, official_names):
    root = ssv2_tree(tmp_path, official_names=official_names)
    train, names = read_split("ssv2", root)
    assert names == ["Holding something next to something", "Putting something on a surface",
                     "Pushing something from left to right"]
    assert train == [(str(root / "78687.webm"), 0), (str(root / "42326.webm"), 1)]
    assert read_split("ssv2", root, split="val")[0] == [(str(root / "1.webm"), 2)]
    (root / "20bn-something-something-v2").mkdir()  # the official archive's video folder is used when present
    assert read_split("ssv2", root, split="validation")[0] == [(str(root / "20bn-something-something-v2/1.webm"), 2)]
    assert ssv2_class_name("Moving [part] of [something]") == "Moving part of something"


@pytest.mark.parametrize("file, content, split, message", [
    ("validation.json", '[{"id": "5", "template": "Juggling [something]"}]', "validation",
     r"validation\.json: entry 0 \(id 5\): template 'Juggling something' is not in .*labels\.json"),
    ("validation.json", '[{"id": "5"}]', "validation", r"validation\.json: entry 0 must hold"),
    ("validation.json", '[{"id": "../../x", "template": "Putting [something] on a surface"}]', "validation",
     r"validation\.json:entry 0: path '\.\./\.\./x\.webm' escapes"),
    ("validation.json", '{"id": "5"}', "validation", r"validation\.json: expected a list"),
    ("labels.json", '{"a": "0", "b": "2"}', "train", r"labels\.json: class indices must be 0\.\.1"),
    ("labels.json", '{"a": "zero"}', "train", r"labels\.json: class indices must be integers"),
    ("labels.json", "{not json", "train", r"labels\.json: not valid JSON"),
    ("train.json", "", "test", "test split is unlabelled"),
])
def test_ssv2_bad_annotations_name_the_file_and_entry(tmp_path, file, content, split, message):
    root = ssv2_tree(tmp_path)
    if content:
        write(root / "labels" / file, content)
    with pytest.raises(DataError, match=message):
        read_split("ssv2", root, split=split)


def test_unreadable_split_files_and_empty_splits_are_data_errors(tmp_path):
    (tmp_path / "train.txt").write_bytes(b"clip.mp4 0\n\xff\xfe\x00 1\n")
    with pytest.raises(DataError, match=r"train\.txt: not a UTF-8 text file"):
        read_split("list", tmp_path)
    write(tmp_path / "train.txt", "# nothing listed yet\n")
    with pytest.raises(DataError, match="the split lists no videos"):
        read_split("list", tmp_path)
