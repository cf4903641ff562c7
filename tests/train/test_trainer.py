"""The trainer: exact resume after a real SIGTERM, non-finite loss, bad samples, safe checkpoint loading."""

from __future__ import annotations

import argparse
import json
import signal

import pytest
import torch

from vidcsl.errors import DataError
from vidcsl.methods.base import register_method
from vidcsl.methods.simclr import SimCLR
from vidcsl.train.checkpoint import load_checkpoint, save_checkpoint
from vidcsl.train.trainer import NonFiniteLossError, RunPreempted, Trainer


@register_method("test_sigterm_simclr")
class SigtermAtStep4(SimCLR):
    """SimCLR that sends itself SIGTERM during its 4th optimiser step (as a cluster preemption would)."""

    def training_step(self, batch, ctx):
        if ctx.global_step == 3:
            signal.raise_signal(signal.SIGTERM)
        return super().training_step(batch, ctx)


@register_method("test_nan_simclr")
class NanAtStep4(SimCLR):
    def training_step(self, batch, ctx):
        loss, logs = super().training_step(batch, ctx)
        return (loss * float("nan") if ctx.global_step == 3 else loss), logs


@register_method("test_nan_embedding_simclr")
class NanEmbeddingAtStep4(SimCLR):
    """A diverged model: its projections turn NaN, which the loss refuses before any loss exists."""

    def project(self, x):
        z = super().project(x)
        return z * float("nan") if self._step == 3 else z

    def training_step(self, batch, ctx):
        self._step = ctx.global_step
        return super().training_step(batch, ctx)


@register_method("test_threads_simclr")
class RecordsThreads(SimCLR):
    seen: set = set()

    def training_step(self, batch, ctx):
        RecordsThreads.seen.add(torch.get_num_threads())
        return super().training_step(batch, ctx)


def run(kit, tmp_path, name, method="simclr", resume=False, data=None, data_cfg=None, **train):
    cfg = kit.cfg(method={"name": method}, train={"epochs": 2, "batch_size": 16, "ckpt_every": 0,
                                                  "knn_every": -1, "log_every": 1, **train},
                  optim={"name": "sgd", "lr": 0.1, "warmup_epochs": 0.5}, data=data_cfg or {})
    return Trainer(cfg, run_dir=tmp_path / name, resume=resume, data=data or kit.bundle(),
                   encoder=kit.TinyEncoder()).fit()


def test_resume_after_sigterm_reproduces_uninterrupted_weights(kit, tmp_path):
    full = run(kit, tmp_path, "full")
    assert full.metrics["global_step"] == 6  # 48 samples / 16 = 3 steps x 2 epochs
    with pytest.raises(RunPreempted, match="resume"):
        run(kit, tmp_path, "cut", method="test_sigterm_simclr")
    state = load_checkpoint(tmp_path / "cut")
    assert state["progress"] == {"epoch": 1, "step_in_epoch": 1, "global_step": 4}  # saved at the step boundary
    with pytest.raises(ValueError, match="--resume"):
        run(kit, tmp_path, "cut")  # an existing run is never silently overwritten
    resumed = run(kit, tmp_path, "cut", method="test_sigterm_simclr", resume=True)  # the config it was trained with
    assert resumed.metrics["global_step"] == 6
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the interrupted run really diverged from a fresh start: resuming is not a no-op
    assert not torch.equal(state["model"]["encoder.fc.weight"], a["encoder.fc.weight"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(kit, tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*step 3.*last.pt"):
        run(kit, tmp_path, "nan", method="test_nan_simclr", ckpt_every=1)
    state = load_checkpoint(tmp_path / "nan")
    assert state["progress"]["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_embeddings_stop_the_run_like_a_nan_loss(kit, tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*non-finite values.*step 3.*last.pt"):
        run(kit, tmp_path, "nanz", method="test_nan_embedding_simclr", ckpt_every=1)
    assert load_checkpoint(tmp_path / "nanz")["progress"]["global_step"] == 3


def test_bad_samples_are_counted_and_empty_batches_skipped(kit, tmp_path):
    # with shuffling off we cannot pick batches, so make every sample of the set bad except a few
    data = kit.bundle(n=48, bad=tuple(range(0, 48, 3)))  # 16 bad samples
    result = run(kit, tmp_path, "bad", data=data, epochs=1, data_cfg={"max_bad_fraction": 0.5})
    assert result.metrics["bad_samples"] == 16
    assert json.loads((tmp_path / "bad" / "metrics.json").read_text())["bad_samples"] == 16
    with pytest.raises(DataError, match=r"16 of 48 training samples drawn in epoch 0 were bad.*max_bad_fraction"):
        run(kit, tmp_path, "too_bad", data=data, epochs=1, data_cfg={"max_bad_fraction": 0.3})


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "step": 3, "cfg": {"a": [1, "b"]}})
    assert load_checkpoint(tmp_path / "ok.pt")["step"] == 3
    torch.save({"model": {}, "payload": argparse.Namespace(cmd="rm -rf /")}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to unpickle.*weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_run_folder_contents_and_weights_only_checkpoint(kit, tmp_path):
    result = run(kit, tmp_path, "files", epochs=1, knn_every=0, knn_k=5)
    folder = tmp_path / "files"
    for name in ("config.yaml", "metrics.csv", "metrics.json", "checkpoints/last.pt"):
        assert (folder / name).is_file(), name
    raw = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert raw["config"]["method"]["name"] == "simclr" and "torch" in raw["rng"]
    assert len(raw["rng_ranks"]) == 1 and torch.equal(raw["rng_ranks"][0]["torch"], raw["rng"]["torch"])
    assert 0.0 <= result.metrics["knn_val_acc"] <= 1.0
    assert "train/loss" in (folder / "metrics.csv").read_text()


def test_gradient_accumulation_equals_the_full_batch(kit, tmp_path):
    """accumulate=2 micro-batches of 8 take the same optimiser steps as one batch of 16."""
    whole = run(kit, tmp_path, "whole", method="supervised", data=kit.bundle(two_views=False), epochs=1)
    split = run(kit, tmp_path, "split", method="supervised", data=kit.bundle(two_views=False), epochs=1,
                accumulate=2)
    assert split.metrics["global_step"] == whole.metrics["global_step"] == 3
    a, b = whole.method.state_dict(), split.method.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    moved = kit.TinyEncoder().fc.weight
    assert not torch.allclose(a["encoder.fc.weight"], moved)  # training really changed the weights


def test_workers_kept_across_epochs_train_the_same_weights_and_end_with_the_run(tmp_path, digits_run):
    """The training loader's workers persist across epochs (no fork per epoch) yet draw each epoch's views:
    one worker gives the weights of no worker, and the worker ends when the run does."""
    import multiprocessing

    from vidcsl.config import load_config

    def weights(workers):
        overrides = [o for o in digits_run.overrides if not o.startswith(("data.num_workers", "train.max_steps"))]
        cfg = load_config(digits_run.config, [*overrides, f"data.num_workers={workers}", "train.epochs=3",
                                          "train.knn_every=-1"])
        result = Trainer(cfg, run_dir=tmp_path / f"w{workers}").fit()
        assert result.metrics["global_step"] == 12  # 64 samples / 16 x 3 epochs
        assert not multiprocessing.active_children()
        return result.method.state_dict()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what training beside a worker uses on 2 cores: the same float summation order
    try:
        a, b = weights(0), weights(1)
    finally:
        torch.set_num_threads(threads)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_training_beside_workers_leaves_them_their_cores_and_gives_the_threads_back(kit, tmp_path):
    from vidcsl.train.trainer import threads_beside_workers

    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        run(kit, tmp_path, "threads", method="test_threads_simclr", data_cfg={"num_workers": 1})
        assert RecordsThreads.seen == {min(4, threads_beside_workers(1))}
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)
    assert threads_beside_workers(0) >= threads_beside_workers(1) >= 1
