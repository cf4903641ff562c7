"""Faults injected for real: a second process in the run folder, a dead lock holder, a read-only folder,
a full disk, killed checkpoint writes, a dataset whose every video is corrupt, a diverging BatchNorm
network, untrusted (non-finite, mis-shaped) checkpoints, a resume with another config, SIGTERM during the
final kNN monitor. Each stops with a message naming the cause (or is survived), nothing silently lost."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vidcsl.cli import main
from vidcsl.errors import CheckpointError, RunFolderError
from vidcsl.methods.base import register_method
from vidcsl.methods.simclr import SimCLR
from vidcsl.train import run_folder
from vidcsl.train.checkpoint import load_checkpoint
from vidcsl.train.logging import read_metrics
from vidcsl.train.trainer import NonFiniteLossError, RunPreempted, Trainer

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout's vidcsl


def train(kit, run_dir, *, data=None, encoder=None, resume=False, method="simclr", collapse_std=0.02,
          **train_keys):
    cfg = kit.cfg(method={"name": method, "collapse_std": collapse_std}, train={"epochs": 2, "batch_size": 16, "ckpt_every": 0, "knn_every": -1,
                                                  "log_every": 1, **train_keys},
                  optim={"name": "sgd", "lr": 0.1})
    return Trainer(cfg, run_dir=run_dir, resume=resume, data=data or kit.bundle(),
                   encoder=encoder or kit.TinyEncoder()).fit()


def cli(*argv):
    return main([str(a) for a in argv])


def last_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()][-1]


# ------------------------------------------------------------------------------- one writer per run folder

HOLD_LOCK = ("import sys, time\nfrom vidcsl.train.run_folder import RunLock\nRunLock(sys.argv[1]).acquire()\n"
             "print('locked', flush=True)\ntime.sleep(300)\n")


def test_second_process_is_refused_and_a_dead_holders_lock_is_reported(kit, tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"'{run_dir}' is in use by process {holder.pid} on host"):
            train(kit, run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no cleanup, the lock file stays behind
        holder.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == holder.pid
    capsys.readouterr()
    result = train(kit, run_dir, epochs=1)
    err = capsys.readouterr().err
    assert f"the lock of process {holder.pid} on host" in err and "was stale" in err
    assert result.metrics["global_step"] == 3 and not (run_dir / ".lock").exists()  # released at the end


def test_two_trainers_in_one_process_are_refused_too(kit, tmp_path):
    lock = run_folder.RunLock(tmp_path / "run").acquire()
    try:
        with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
            train(kit, tmp_path / "run")
    finally:
        lock.release()
    assert train(kit, tmp_path / "run", epochs=1).metrics["global_step"] == 3


# ---------------------------------------------------------------------------------------- machine faults


def test_a_file_where_the_checkpoint_folder_must_be(kit, tmp_path, digits_run, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("not a folder")
    with pytest.raises(RunFolderError, match=r"cannot write into the checkpoint folder '.*checkpoints': "
                                             r"File exists \(EEXIST\)"):
        train(kit, run_dir, epochs=1)  # refused at the start, not after training
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]
    # the same through the CLI: one line, exit 2
    cli_dir = tmp_path / "cli"
    cli_dir.mkdir()
    (cli_dir / "checkpoints").write_text("not a folder")
    assert cli("pretrain", digits_run.config, *digits_run.overrides, "--run-dir", cli_dir) == 2
    line = last_error_line(capsys.readouterr().err)
    assert line == f"vidcsl pretrain: error: cannot write into the checkpoint folder '{cli_dir}/checkpoints': " \
                   f"File exists (EEXIST)"


def _immutable(path) -> bool:
    """chattr +i: not even root may create files in the folder (where the file system supports it)."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0 if shutil.which(
        "chattr") else False
    if done:
        try:
            (path / "probe").touch()
        except OSError:
            return True
        (path / "probe").unlink()
        subprocess.run(["chattr", "-i", str(path)])
    return False


def test_read_only_run_folder_is_one_line_and_keeps_the_checkpoint(digits_run, tmp_path, capsys):
    run_dir = digits_run.copy(tmp_path / "run")
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    if not _immutable(run_dir / "checkpoints"):
        pytest.skip("this file system cannot make a folder read-only for root (chattr +i); "
                    "the patched-write tests below cover the same code")
    try:
        code = cli("pretrain", digits_run.config, *digits_run.overrides, "train.max_steps=4", "--resume",
                   "--run-dir", run_dir)
        line = last_error_line(capsys.readouterr().err)
    finally:
        subprocess.run(["chattr", "-i", str(run_dir / "checkpoints")])
    assert code == 2
    assert line == (f"vidcsl pretrain: error: cannot write into the checkpoint folder '{run_dir}/checkpoints': "
                    f"Operation not permitted (EPERM)")  # at the start, before any training
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.parametrize("code,cause", [(errno.ENOSPC, "No space left on device (ENOSPC)"),
                                        (errno.EROFS, "Read-only file system (EROFS)")])
def test_failing_write_mid_run_keeps_the_previous_checkpoint(kit, tmp_path, monkeypatch, code, cause):
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if str(dst).endswith("last.pt"):
            calls.append(dst)
        if len(calls) == 2:  # the second checkpoint: the disk is full now
            raise OSError(code, os.strerror(code))
        return real_replace(src, dst)

    monkeypatch.setattr(run_folder.os, "replace", replace)
    with pytest.raises(RunFolderError, match=rf"cannot write checkpoint '.*last.pt': {re.escape(cause)}; the previous "
                                             r"checkpoint is intact"):
        train(kit, tmp_path / "run", ckpt_every=1)
    assert load_checkpoint(tmp_path / "run")["progress"]["global_step"] == 1
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.pt"]  # no temporary left


def test_full_disk_by_file_size_limit_in_a_real_process(digits_run, tmp_path):
    """RLIMIT_FSIZE: every write past 16 KiB fails with EFBIG, as a full disk fails with ENOSPC."""
    run_dir = digits_run.copy(tmp_path / "run")
    ckpt = run_dir / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    assert len(before) > 16384 > (run_dir / "metrics.csv").stat().st_size

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    proc = subprocess.run([sys.executable, "-m", "vidcsl", "pretrain", digits_run.config, *digits_run.overrides,
                           "train.max_steps=4", "--resume", "--run-dir", str(run_dir)], capture_output=True,
                          text=True, env=ENV, preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = last_error_line(proc.stderr)
    assert line == (f"vidcsl pretrain: error: cannot write checkpoint '{ckpt}': File too large (EFBIG); "
                    f"the previous checkpoint is intact")
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]


def test_leftovers_of_a_killed_checkpoint_write_are_removed(digits_run, tmp_path, capsys):
    run_dir = digits_run.copy(tmp_path / "run")
    leftover = run_dir / "checkpoints" / "last.pt.k1ll3d.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert cli("pretrain", digits_run.config, *digits_run.overrides, "train.max_steps=3", "--resume",
               "--run-dir", run_dir) == 0
    assert "removed 1 temporary file(s) of an interrupted checkpoint write: last.pt.k1ll3d.tmp" in \
        capsys.readouterr().err
    assert not leftover.exists() and load_checkpoint(run_dir)["progress"]["global_step"] == 3


# -------------------------------------------------------------------------------------- no data, no run


@pytest.mark.filterwarnings("ignore::vidcsl.data.video.BadVideoWarning")
def test_a_run_whose_every_video_is_corrupt_fails_naming_the_root(tmp_path, capsys):
    root = tmp_path / "videos"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            (root / label / f"clip{i}.mp4").write_bytes(rng.bytes(2000))  # junk: no container, no stream
    run_dir = tmp_path / "run"
    code = cli("pretrain", video_config(tmp_path, root), "--run-dir", run_dir)
    line = last_error_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith(f"vidcsl pretrain: error: data.root '{root}': ")
    assert "training samples drawn in epoch 0 were bad" in line and "no usable batch" in line
    n_bad = int(line.split(": ")[3].split(" of ")[0])
    assert n_bad >= 4  # every sample the epoch drew
    assert not (run_dir / "checkpoints" / "last.pt").exists()  # no untrained checkpoint posing as a result
    assert not (run_dir / "metrics.json").exists()


def video_config(tmp_path, root) -> str:
    path = tmp_path / "videos.yaml"
    path.write_text(f"""data:
  kind: video_folder
  root: {root}
  num_frames: 2
  stride: 1
  image_size: 16
  video_backend: pyav
  num_workers: 0
model:
  encoder: small_cnn3d
  encoder_kwargs: {{channels: [4, 8, 8, 8]}}
  proj_hidden_dim: 8
  proj_out_dim: 8
train:
  epochs: 1
  batch_size: 4
  progress: false
  tensorboard: false
  knn_k: 2
""")
    return str(path)


# ------------------------------------------------------------------------------------------ divergence


class ExplodingBN(nn.Module):
    """Linear -> BatchNorm -> ReLU whose linear weights grow 1e8x per training forward, as diverging weights in
    front of a BatchNorm do: the normalised output, and so the loss, stay finite while the running variance
    overflows to inf (at the third step)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.bn = nn.Linear(48, 16), nn.BatchNorm1d(16)
        self.feature_dim, self.is_video = 16, False

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.fc.weight.mul_(1e8)
        return torch.relu(self.bn(self.fc(x.flatten(1))))


@pytest.mark.parametrize("log_every,ckpt_every", [(1, 1), (100, 1), (100, 0)],
                         ids=["found-at-log-step", "found-at-checkpoint", "found-at-final-checkpoint"])
def test_diverged_batchnorm_statistics_stop_the_run(kit, tmp_path, log_every, ckpt_every):
    with pytest.raises(NonFiniteLossError, match=r"non-finite model state \(encoder\.bn\.running_var.*step 3"):
        # the collapse guard is off: the exploding layer also collapses the embeddings, which it would catch first
        train(kit, tmp_path / "run", encoder=ExplodingBN(), epochs=1, log_every=log_every, ckpt_every=ckpt_every,
              collapse_std=0.0)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    if ckpt_every:  # the last good checkpoint is finite (load_checkpoint refuses anything else)
        assert load_checkpoint(ckpt)["progress"]["global_step"] == 2
    else:
        assert not ckpt.exists()
    assert not (tmp_path / "run" / "metrics.json").exists()  # no chance-level kNN reported as a result


def _poison(run_dir, change):
    path = run_dir / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    change(state["model"])
    torch.save(state, path)


@pytest.mark.parametrize("command", [["knn"], ["probe"], ["evaluate", "n_samples=8"],
                                     ["nonrobust", "--n-train", "4", "--steps", "1"]])
def test_non_finite_checkpoint_is_refused_by_name(digits_run, tmp_path, capsys, command):
    run_dir = digits_run.copy(tmp_path / "run")
    key = next(k for k in load_checkpoint(run_dir)["model"] if k.endswith("running_var"))
    _poison(run_dir, lambda model: model[key].fill_(float("inf")))
    assert cli(command[0], run_dir, *command[1:]) == 2
    line = last_error_line(capsys.readouterr().err)
    assert "non-finite values (NaN or inf)" in line and f"'model.{key}'" in line and "diverged run" in line


def test_resume_from_a_non_finite_checkpoint_is_refused(digits_run, tmp_path):
    run_dir = digits_run.copy(tmp_path / "run")
    _poison(run_dir, lambda model: next(v for v in model.values() if v.is_floating_point()).fill_(float("nan")))
    with pytest.raises(CheckpointError, match="non-finite values"):
        load_checkpoint(run_dir)


# -------------------------------------------------------------------------------- resume and checkpoints


def test_resume_with_another_config_fails_before_writing_anything(digits_run, tmp_path, capsys):
    run_dir = digits_run.copy(tmp_path / "run")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code = cli("pretrain", digits_run.config, *digits_run.overrides, "optim.lr=0.5", "model.proj_out_dim=4",
               "train.max_steps=4", "--resume", "--run-dir", run_dir)
    line = last_error_line(capsys.readouterr().err)
    assert code == 2
    assert "--resume: the config differs from the one" in line
    assert "optim.lr: 0.003 -> 0.5" in line and "model.proj_out_dim: 8 -> 4" in line
    assert "train.max_steps" not in line  # running longer is what resuming is for
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # config.yaml untouched


def test_shape_mismatched_checkpoint_lists_the_shapes(digits_run, tmp_path, capsys):
    run_dir = digits_run.copy(tmp_path / "run")
    _poison(run_dir, lambda model: model.__setitem__("head.net.0.weight", torch.zeros(3, 5)))
    assert cli("knn", run_dir) == 2
    line = last_error_line(capsys.readouterr().err)
    assert "does not fit the model its config builds" in line
    assert "head.net.0.weight: checkpoint (3, 5) vs model (16, 16)" in line
    with pytest.raises(CheckpointError, match=r"head\.net\.0\.weight: checkpoint \(3, 5\)"):
        from vidcsl.config import load_config

        Trainer(load_config(digits_run.config, digits_run.overrides), run_dir=run_dir, resume=True).fit()


# ----------------------------------------------------------------------------------------------- signals


class SigtermOnFirstRead(torch.utils.data.Dataset):
    """The kNN bank: the first read sends this process SIGTERM (a preemption during the final kNN)."""

    def __init__(self, ds):
        self.ds, self.sent = ds, False

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        if not self.sent:
            self.sent = True
            signal.raise_signal(signal.SIGTERM)
        return self.ds[i]


def test_sigterm_during_the_final_knn_exits_3_resumable(kit, tmp_path):
    data = kit.bundle()
    data.train_eval = SigtermOnFirstRead(data.train_eval)
    with pytest.raises(RunPreempted, match="SIGTERM during the final kNN monitor") as stop:
        train(kit, tmp_path / "run", data=data, knn_every=0, knn_k=5, epochs=1)
    assert stop.value.exit_code == 3
    partial = json.loads((tmp_path / "run" / "metrics_partial.json").read_text())
    assert partial["global_step"] == 3 and partial["knn_val_acc"] is None and partial["epoch_loss"]
    assert not (tmp_path / "run" / "metrics.json").exists()  # what a study reads as "finished"
    assert load_checkpoint(tmp_path / "run")["progress"]["global_step"] == 3
    resumed = train(kit, tmp_path / "run", data=data, knn_every=0, knn_k=5, epochs=1, resume=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["knn_val_acc"] <= 1.0 and metrics["epoch_loss"] == partial["epoch_loss"]
    assert resumed.metrics["global_step"] == 3 and not (tmp_path / "run" / "metrics_partial.json").exists()


def test_sigterm_during_the_knn_monitor_between_epochs_redoes_the_epoch_end(kit, tmp_path):
    data = kit.bundle()
    data.train_eval = SigtermOnFirstRead(data.train_eval)
    with pytest.raises(RunPreempted, match="during the kNN monitor after epoch 0"):
        train(kit, tmp_path / "run", data=data, knn_every=1, knn_k=5, epochs=2)
    assert load_checkpoint(tmp_path / "run")["progress"] == {"epoch": 0, "step_in_epoch": 3, "global_step": 3}
    train(kit, tmp_path / "run", data=data, knn_every=1, knn_k=5, epochs=2, resume=True)
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows if r["name"] == "epoch/knn_val_acc"] == ["0"]
    assert [r["epoch"] for r in rows if r["name"] == "epoch/loss"] == ["0", "1"]


@register_method("test_faults_sigterm")
class SigtermAtStep4(SimCLR):
    def training_step(self, batch, ctx):
        if ctx.global_step == 3:
            signal.raise_signal(signal.SIGTERM)
        return super().training_step(batch, ctx)


def test_resumed_epoch_logs_the_loss_of_the_whole_epoch(kit, tmp_path):
    """Running sums in the checkpoint: the interrupted epoch's logged loss equals the uninterrupted run's."""
    train(kit, tmp_path / "full")
    with pytest.raises(RunPreempted):
        train(kit, tmp_path / "cut", method="test_faults_sigterm")  # stops at step 4 = epoch 1, step 1
    train(kit, tmp_path / "cut", method="test_faults_sigterm", resume=True)

    def epoch_losses(name):
        return [r["value"] for r in read_metrics(tmp_path / name) if r["name"] == "epoch/loss"]

    full, cut = epoch_losses("full"), epoch_losses("cut")
    assert len(full) == len(cut) == 2 and full == cut  # bit-identical, epoch 1 included
    steps = [r["value"] for r in read_metrics(tmp_path / "full") if r["name"] == "train/loss" and r["epoch"] == "1"]
    assert cut[1] == pytest.approx(sum(steps) / 3) and cut[1] != pytest.approx(sum(steps[1:]) / 2)


def test_sigterm_through_the_cli_exits_3(digits_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli("pretrain", digits_run.config, *digits_run.overrides, "method.name=test_faults_sigterm",
               "train.max_steps=6", "--run-dir", run_dir)
    line = last_error_line(capsys.readouterr().err)
    assert code == 3 and line.startswith("vidcsl pretrain: stopped by SIGTERM at optimiser step 4")
    assert load_checkpoint(run_dir)["progress"]["global_step"] == 4
    assert cli("pretrain", digits_run.config, *digits_run.overrides, "method.name=test_faults_sigterm",
               "train.max_steps=6", "--resume", "--run-dir", run_dir) == 0
    assert load_checkpoint(run_dir)["progress"]["global_step"] == 6
