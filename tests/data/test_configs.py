"""The Kinetics-400 pretraining / UCF101 and HMDB51 transfer configs, and SSv2 from config to frame-exact clips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vidcsl.config import config_to_dict, load_config
from vidcsl.data.factory import build_datasets

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_kinetics_pretraining_config():
    cfg = load_config(CONFIGS / "k400_r3d18_simclr.yaml", check_paths=False)
    d = cfg.data
    assert (d.kind, d.train_list, d.val_list) == ("kinetics", "data/kinetics400/annotations/train.csv",
                                                  "data/kinetics400/annotations/validate.csv")
    assert (d.num_frames, d.stride, d.image_size, d.clip_sampler) == (16, 2, 112, "two_clip")
    assert (cfg.model.encoder, cfg.method.name) == ("r3d_18", "simclr")


def header_overrides(path: Path) -> tuple[str, list[str]]:
    """The run folder and the overrides of the ``vidcsl probe`` command in a config's header comment."""
    comment = " ".join(line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#"))
    command = re.search(r"vidcsl probe (\S+) --out \S+ (.*?) \(tests/", comment)
    return command[1], command[2].split()


@pytest.mark.parametrize("target, kind", [("ucf101", "ucf101"), ("hmdb51", "hmdb51")])
def test_transfer_configs_are_the_pretraining_config_with_the_documented_overrides(target, kind):
    path = CONFIGS / f"k400_to_{target}_probe.yaml"
    cfg = load_config(path, check_paths=False)
    assert (cfg.data.kind, cfg.data.fold, cfg.data.train_list) == (kind, 1, None)
    assert (cfg.model.encoder, cfg.data.num_frames, cfg.data.image_size) == ("r3d_18", 16, 112)  # as pretrained
    run, overrides = header_overrides(path)
    assert run == "runs/k400_r3d18_simclr"
    probe_cfg = load_config(CONFIGS / "k400_r3d18_simclr.yaml", overrides, check_paths=False)
    probe_cfg.train.name = cfg.train.name
    assert config_to_dict(probe_cfg) == config_to_dict(cfg)


def test_ssv2_config_loads():
    cfg = load_config(CONFIGS / "ssv2_r3d18_simclr.yaml", check_paths=False)
    assert (cfg.data.kind, cfg.data.root) == ("ssv2", "data/ssv2")


@pytest.fixture(scope="module")
def ssv2_root(tmp_path_factory, make_video):
    """A tiny SSv2 tree in the official archive's layout: webm (VP9) videos named <id>.webm, JSON labels."""
    root = tmp_path_factory.mktemp("ssv2")
    templates = ["Holding something next to something", "Pushing something from left to right"]
    (root / "labels").mkdir()
    (root / "labels" / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(templates)}))
    bracketed = ["Holding [something] next to [something]", "Pushing [something] from left to right"]
    train = [{"id": str(100 + i), "template": bracketed[i % 2]} for i in range(4)]
    val = [{"id": "7", "template": bracketed[1]}]
    (root / "labels" / "train.json").write_text(json.dumps(train))
    (root / "labels" / "validation.json").write_text(json.dumps(val))
    videos = root / "20bn-something-something-v2"
    videos.mkdir()
    for entry in train + val:
        make_video(videos / f"{entry['id']}.webm", 24, codec="libvpx-vp9", fps=12, gop=6, height=48, width=48)
    return root


def test_ssv2_from_config_to_frame_exact_clips(ssv2_root, frame_index):
    cfg = load_config(CONFIGS / "ssv2_r3d18_simclr.yaml", [f"data.root={ssv2_root}", "data.image_size=48",
                                                           "data.num_frames=4", "data.stride=2",
                                                           "data.eval_clips=1", "data.eval_crops=1"])
    data = build_datasets(cfg.data, "eval")
    assert data.class_names == ["Holding something next to something", "Pushing something from left to right"]
    assert len(data.train) + len(data.val) == 4 and len(data.test) == 1
    x, y = data.test[0]
    assert y == 1 and x.shape == (3, 4, 48, 48)
    clip = x.mul(255).round().byte().permute(1, 2, 3, 0)  # 48x48 videos: no resize, no crop
    assert frame_index(clip) == [8, 10, 12, 14]  # centre clip of 24 frames: start (24 - 7) // 2
    contrastive = build_datasets(cfg.data, "contrastive")
    (v1, v2), _ = contrastive.train[0]
    assert v1.shape == v2.shape == (3, 4, 48, 48)
