"""Config domains: every bad numeric value is refused by key name when the config is loaded, before any
data, model or run folder exists; through ``load_config`` and through the CLI (exit 2, one line)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from vidcsl.cli import main
from vidcsl.config import config_from_dict, load_config, validate_config
from vidcsl.errors import ConfigError
from vidcsl.methods.false_negatives import FalseNegativeConfig

ROOT = Path(__file__).resolve().parents[2]

# (overrides, what the message must contain): each one a mistake that used to train silently, fail late
# or deep inside a function
BAD_VALUES = [
    (["optim.grad_clip=-1"], "config key 'optim.grad_clip' must be > 0, got -1.0"),  # was gradient ascent
    (["optim.grad_clip=0"], "'optim.grad_clip' must be > 0"),
    (["data.limit_train=0"], "config key 'data.limit_train' must be >= 1, got 0"),  # was "no limit"
    (["data.limit_eval=-3"], "'data.limit_eval' must be >= 1"),
    (["optim.lr=.inf"], "config key 'optim.lr' must be > 0, got inf"),  # was a step-1 "non-finite loss"
    (["optim.lr=-0.1"], "'optim.lr' must be > 0"),
    (["optim.weight_decay=.nan"], "config key 'optim.weight_decay' must be >= 0, got nan"),
    (["optim.warmup_epochs=-1"], "'optim.warmup_epochs' must be >= 0"),
    (["data.aug_strength=-0.5"], "'data.aug_strength' must be >= 0"),
    (["optim.momentum=1.5"], "'optim.momentum' must be >= 0 and < 1"),
    (["optim.betas=[0.9, 1.0]"], "'optim.betas[1]' must be >= 0 and < 1"),
    (["optim.betas=[0.9]"], "'optim.betas' must hold two numbers"),
    (["optim.min_lr=-1e-3"], "'optim.min_lr' must be >= 0"),
    (["optim.lars_eta=0"], "'optim.lars_eta' must be > 0"),
    (["data.crop_scale=[0, 1]"], "'data.crop_scale[0]' must be > 0 and <= 1"),
    (["data.crop_scale=[0.8, 0.2]"], "'data.crop_scale' must be [low, high] with 0 < low <= high <= 1"),
    (["data.val_fraction=1"], "'data.val_fraction' must be > 0 and < 1"),
    (["data.fold=4"], "'data.fold' must be >= 1 and <= 3"),
    (["data.num_frames=0"], "'data.num_frames' must be >= 1"),
    (["data.stride=0"], "'data.stride' must be >= 1"),
    (["data.target_fps=0"], "'data.target_fps' must be > 0"),
    (["data.max_gap_s=-1"], "'data.max_gap_s' must be >= 0"),
    (["data.num_workers=-1"], "'data.num_workers' must be >= 0"),
    (["data.image_size=0"], "'data.image_size' must be >= 1"),
    (["data.eval_clips=0"], "'data.eval_clips' must be >= 1"),
    (["data.max_bad_fraction=1.5"], "'data.max_bad_fraction' must be >= 0 and <= 1"),
    (["model.proj_hidden_dim=0"], "'model.proj_hidden_dim' must be >= 1"),
    (["model.proj_layers=0"], "'model.proj_layers' must be >= 1"),
    (["model.encoder=resnet_nope"], "config key 'model.encoder' is 'resnet_nope', not a known encoder"),
    (["method.name=nope"], "config key 'method.name' is 'nope'"),
    (["method.temperature=0"], "'method.temperature' must be > 0"),
    (["train.epochs=0"], "'train.epochs' must be >= 1"),
    (["train.max_steps=0"], "'train.max_steps' must be >= 1"),
    (["train.batch_size=-8"], "'train.batch_size' must be >= 1"),
    (["train.accumulate=0"], "'train.accumulate' must be >= 1"),
    (["train.batch_size=10", "train.accumulate=4"], "'train.batch_size' (10) must be divisible by 'train.accumulate'"),
    (["train.seed=-1"], "'train.seed' must be >= 0"),
    (["train.seed=4294967296"], "'train.seed' must be >= 0 and < 4294967296"),
    (["train.device=gpu"], "config key 'train.device' must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["train.device=cuda:x"], "'train.device' must be auto, cpu, cuda or cuda:N"),
    (["train.log_every=0"], "'train.log_every' must be >= 1"),
    (["train.ckpt_every=-1"], "'train.ckpt_every' must be >= 0"),
    (["train.knn_every=-2"], "'train.knn_every' must be >= -1"),
    (["train.knn_k=0"], "'train.knn_k' must be >= 1"),
    (["train.knn_temperature=0"], "'train.knn_temperature' must be > 0"),
    (["probe.epochs=0"], "'probe.epochs' must be >= 1"),
    (["probe.lr=-1"], "'probe.lr' must be > 0"),
    (["probe.momentum=-0.1"], "'probe.momentum' must be >= 0"),
    (["probe.weight_decay=-1"], "'probe.weight_decay' must be >= 0"),
    (["probe.batch_size=0"], "'probe.batch_size' must be >= 1"),
    (["fn.threshold=1.5"], "'fn.threshold' must be >= -1 and <= 1"),
    (["fn.topk=0"], "'fn.topk' must be >= 1"),
    (["fn.warmup_epochs=-1"], "'fn.warmup_epochs' must be >= 0"),
]


def _key(overrides: list[str]) -> str:
    return overrides[-1].split("=")[0]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_value_is_refused_by_key_when_loading(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "digits_simclr.yaml", overrides)
    assert message in str(err.value)


def _numeric(tp) -> bool:
    return tp in (int, float) or (typing.get_origin(tp) is not dict and any(map(_numeric, typing.get_args(tp))))


def test_every_numeric_field_has_a_declared_domain():
    """A numeric field added without a domain would silently accept any finite number (or any int)."""
    from vidcsl.config import Config
    from vidcsl.methods.base import BUILT_IN, method_class

    sections = dict(typing.get_type_hints(Config))
    sections.update({f"method.options of {name}": method_class(name).settings_class for name in BUILT_IN})
    undeclared = []
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        undeclared += [f"{section}.{f.name}" for f in dataclasses.fields(cls)
                       if _numeric(hints[f.name]) and "domain" not in f.metadata]
    assert not undeclared, undeclared


@pytest.mark.parametrize("overrides,message", BAD_VALUES[::4], ids=[" ".join(o) for o, _ in BAD_VALUES[::4]])
def test_cli_refuses_bad_value_in_one_line_before_creating_the_run(overrides, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["pretrain", str(ROOT / "configs" / "digits_simclr.yaml"), *overrides, "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vidcsl pretrain: error: ") and message in err
    assert "Traceback" not in err
    assert not run_dir.exists()  # refused before anything was written (or built)


def test_cli_process_exits_2_without_traceback(tmp_path):
    """A real process: exit status 2, one line on stderr naming the key."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "vidcsl", "pretrain", str(ROOT / "configs" / "digits_simclr.yaml"),
                           "optim.grad_clip=-1", "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "vidcsl pretrain: error: config key 'optim.grad_clip' must be > 0, got -1.0"]
    assert not (tmp_path / "run").exists()


def test_config_changed_in_code_is_checked_again():
    cfg = config_from_dict({})
    cfg.optim.grad_clip = -2.0
    with pytest.raises(ConfigError, match="'optim.grad_clip' must be > 0"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="'fn.topk' must be >= 1, got 0"):
        FalseNegativeConfig("topk", topk=0).validate()


def test_valid_edges_are_accepted():
    cfg = load_config(None, ["optim.grad_clip=null", "data.limit_train=1", "optim.warmup_epochs=0",
                             "data.aug_strength=0", "train.knn_every=-1", "train.device=cuda:1", "fn.threshold=-1",
                             "train.seed=4294967295", "data.max_bad_fraction=1"])
    assert cfg.optim.grad_clip is None and cfg.data.limit_train == 1 and cfg.train.device == "cuda:1"


def test_study_keys_have_domains(tmp_path):
    from vidcsl.robustness.study import load_study_config

    study = {"tracks": [{"name": "images", "config": str(ROOT / "configs" / "digits_simclr.yaml"),
                         "variants": ["sl"]}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert load_study_config(path).fn_topk == 5
    for override, message in (("fn_topk=0", "'fn_topk' must be >= 1"), ("n_boot=10", "'n_boot' must be >= 100"),
                              ("confidence=1", "'confidence' must be > 0 and < 1"), ("seeds=[-1]", r"'seeds\[0\]' must be >= 0"),
                              ("fn_threshold=2", "'fn_threshold' must be >= -1 and <= 1")):
        with pytest.raises(ConfigError, match=message):
            load_study_config(path, [override])
