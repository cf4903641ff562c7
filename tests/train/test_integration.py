"""End to end on the real embedded data: methods learn on digits, pretrain -> probe -> knn, a video run."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import default_collate

from vidcsl.config import load_config
from vidcsl.data.factory import build_datasets
from vidcsl.methods.base import StepContext, build_method
from vidcsl.models.registry import build_encoder
from vidcsl.train.cli import run_knn
from vidcsl.train.probe import run_probe
from vidcsl.train.trainer import Trainer

SMALL = ["model.encoder_kwargs={channels: [8, 16, 16, 32]}", "model.proj_hidden_dim=32", "model.proj_out_dim=16",
         "train.progress=false", "train.tensorboard=false", "data.num_workers=0"]


@pytest.fixture(scope="module")
def digits_batch():
    cfg = load_config(None, ["data.kind=embedded_digits"])
    data = build_datasets(cfg.data, "contrastive", seed=0)
    torch.manual_seed(0)
    return default_collate([data.train[i] for i in range(32)])


@pytest.mark.parametrize("name,fn", [("simclr", {}), ("simclr", {"detector": "topk", "topk": 3}),
                                     ("simclr", {"detector": "threshold", "threshold": 0.9}),
                                     ("simclr", {"detector": "oracle"}), ("moco", {}), ("supcon", {}),
                                     ("supervised", {})])
def test_methods_reduce_loss_on_digits(digits_batch, name, fn):
    overrides = SMALL + [f"method.name={name}"]
    overrides += ["method.options.queue_size=64", "method.options.momentum=0.9"] if name == "moco" else []
    overrides += [f"fn.{k}={v}" for k, v in fn.items()]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    method = build_method(cfg, build_encoder("small_cnn", channels=(8, 16, 16, 32)), 10)
    (x1, x2), y = digits_batch
    batch = (x1, y) if name == "supervised" else digits_batch
    opt = torch.optim.Adam(method.parameters_to_optimize(), lr=3e-3)
    losses = []
    for step in range(12):
        loss, _ = method.training_step(batch, StepContext(global_step=step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_optimizer_step()
        losses.append(float(loss.detach()))
    assert losses[2] > 0 and min(losses[-3:]) < 0.9 * losses[2], losses


def test_pretrain_then_probe_then_knn_on_digits(tmp_path):
    cfg = load_config("configs/digits_simclr.yaml", SMALL + [
        "data.limit_train=128", "data.limit_eval=64", "train.batch_size=32", "train.max_steps=3",
        "train.knn_k=10", f"train.runs_dir={tmp_path}", "probe.epochs=3"])
    result = Trainer(cfg).fit()
    run = tmp_path / "digits_simclr"
    assert result.run_dir == run and result.metrics["global_step"] == 3
    assert 0.0 <= result.metrics["knn_val_acc"] <= 1.0
    summary = run_probe(run)
    assert json.loads((run / "probe" / "probe.json").read_text())["best_epoch"] == summary["best_epoch"]
    saved = torch.load(run / "probe" / "classifier.pt", weights_only=True)
    assert saved["model"]["fc.weight"].shape == (10, 32)
    assert 0.0 <= summary["test_acc"] <= 1.0 and len(summary["history"]) == 3
    knn = run_knn(str(run), ["train.knn_k=5"])
    assert set(knn) >= {"knn_val_acc", "knn_test_acc"}


def test_video_pretrain_runs_on_embedded_clips(tmp_path):
    cfg = load_config("configs/video_simclr.yaml", SMALL[1:] + [
        "model.encoder_kwargs={channels: [4, 8, 8, 16]}", "data.num_frames=4", "data.limit_train=16",
        "data.limit_eval=8", "train.batch_size=8", "train.max_steps=2", "train.knn_k=5",
        f"train.runs_dir={tmp_path}"])
    result = Trainer(cfg).fit()
    assert result.metrics["global_step"] == 2 and result.method.encoder.is_video
    assert result.metrics["bad_samples"] == 0
