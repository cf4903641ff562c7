"""Configs: typed loading, overrides, and every mistake caught before training with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidcsl.config import apply_overrides, config_from_dict, config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_overrides_are_parsed_as_yaml_and_typed(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\n  lr: 0.1\n"),
                      ["optim.lr=3e-1", "train.epochs=2", "optim.betas=[0.8, 0.9]", "fn.detector=topk",
                       "train.max_steps=null", "model.encoder_kwargs={channels: [4, 8]}", "optim.min_lr=0"])
    assert cfg.optim.lr == 0.3 and cfg.train.epochs == 2 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.fn.detector == "topk" and cfg.train.max_steps is None
    assert cfg.model.encoder_kwargs == {"channels": [4, 8]}
    assert isinstance(cfg.optim.min_lr, float)  # an int where a float is expected is widened
    assert cfg.train.name == "c"  # run name defaults to the file stem


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=0.1", "config key 'optim.lrr' is unknown (did you mean 'optim.lr'?)"),
    ("optimm.lr=0.1", "config key 'optimm' is unknown (did you mean 'optim'?)"),
    ("train.epochs=two", "config key 'train.epochs' expects int, got 'two'"),
    ("train.epochs=2.5", "config key 'train.epochs' expects int"),
    ("train.deterministic=3", "config key 'train.deterministic' expects bool"),
    ("optim.name=adam", "config key 'optim.name' must be one of"),
    ("fn.detector=magic", "config key 'fn.detector' must be one of"),
    ("method.temperature=0", "config key 'method.temperature' must be > 0"),
    ("train.batch_size=0", "config key 'train.batch_size' must be >= 1"),
    ("data.kind=cifar10", "config key 'data.root' is required"),
    ("optim.betas=0.9", "config key 'optim.betas' expects a list"),
    ("lr", "must look like 'section.key=value'"),
])
def test_bad_config_fails_naming_the_key(tmp_path, override, message):
    with pytest.raises(ValueError) as err:
        load_config(write(tmp_path, "train:\n  epochs: 1\n"), [override])
    assert message in str(err.value)


def test_missing_dataset_path_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"dataset path '{missing}' .*'data.root'.* does not exist"):
        load_config(write(tmp_path, f"data:\n  kind: ucf101\n  root: {missing}\n"))
    with pytest.raises(ValueError, match="data.train_list"):
        load_config(write(tmp_path, "data:\n  kind: video_list\n"))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ValueError, match="config key 'train' must be a mapping"):
        load_config(write(tmp_path, "train: 3\n"))


def test_base_file_is_merged_and_overridden(tmp_path):
    write(tmp_path, "optim:\n  lr: 0.5\n  momentum: 0.8\ntrain:\n  epochs: 7\n", "parent.yaml")
    cfg = load_config(write(tmp_path, "base: parent.yaml\noptim:\n  lr: 0.2\n"), ["train.epochs=3"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs) == (0.2, 0.8, 3)
    write(tmp_path, "base: loop.yaml\n", "loop.yaml")
    with pytest.raises(ValueError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")


def test_round_trip_through_plain_dict():
    cfg = config_from_dict(apply_overrides({}, ["fn.detector=oracle", "optim.lr=0.7"]))
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


TRAINING_CONFIGS = ["digits_simclr", "digits_supervised", "digits_simclr_fn", "video_simclr", "video_supervised",
                    "cifar10_resnet18_simclr", "cifar10_resnet18_supervised", "cifar10_resnet18_supcon",
                    "ucf101_r3d18_simclr", "ucf101_r3d18_supervised", "hmdb51_probe", "digits_supervised_at",
                    "cifar10_resnet18_supervised_at"]


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_shipped_training_configs_load(name):
    path = CONFIGS / f"{name}.yaml"
    embedded = name.startswith(("digits", "video"))  # the others name dataset folders absent here
    cfg = load_config(path, check_paths=embedded)
    assert cfg.train.name == name
    if embedded:
        assert cfg.model.encoder in ("small_cnn", "small_cnn3d")
