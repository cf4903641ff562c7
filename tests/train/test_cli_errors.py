"""User errors on the command line: each exits with status 2 and one line naming what is wrong, never a
traceback; a bug keeps its traceback; SIGTERM anywhere exits 3."""

from __future__ import annotations

import argparse
import signal
import time

import pytest
import torch

from vidcsl.cli import main
from vidcsl.errors import Preempted

NO_GPU = not torch.cuda.is_available()
MISSING_GPU = "cuda" if NO_GPU else f"cuda:{torch.cuda.device_count()}"


def _files(tmp_path, digits_run):
    """The things the cases refer to: a run, a folder without a checkpoint, a file, bad checkpoints."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    torch.save({"model": {}, "payload": argparse.Namespace(cmd="rm -rf /")}, tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint\x07" * 10)
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    return {"RUN": str(digits_run.dir), "CONFIG": digits_run.config, "TMP": str(tmp_path)}


# (argv, what the last line must contain); RUN, CONFIG and TMP are filled in
CASES = [
    (["pretrain", "TMP/missing.yaml"], "config file 'TMP/missing.yaml' does not exist"),
    (["pretrain", "CONFIG", "optim.lrr=1"], "config key 'optim.lrr' is unknown (did you mean 'optim.lr'?)"),
    (["pretrain", "CONFIG", "train.device=tpu"], "config key 'train.device' must be auto, cpu, cuda or cuda:N"),
    (["pretrain", "CONFIG", f"train.device={MISSING_GPU}", "train.max_steps=1", "--run-dir", "TMP/gpu"],
     "config key 'train.device' "),
    (["pretrain", "CONFIG", "optim.grad_clip=-1"], "config key 'optim.grad_clip' must be > 0"),
    (["supervise", "CONFIG", "data.kind=cifar10"], "config key 'data.root' is required for data.kind='cifar10'"),
    (["pretrain", "CONFIG", "--resume", "--run-dir", "TMP/empty"], "--resume: no checkpoint at"),
    (["pretrain", "CONFIG", "--run-dir", "RUN"], "already has a checkpoint; pass --resume"),
    (["pretrain", "CONFIG", "--run-dir", "TMP/a_file"], "cannot create the run folder 'TMP/a_file': "),
    (["knn", "TMP/empty"], "checkpoint 'TMP/empty/checkpoints/last.pt' does not exist"),
    (["knn", "TMP/evil.pt"], "refusing to unpickle it"),
    (["knn", "TMP/garbage.pt"], "is not a readable torch checkpoint"),
    (["knn", "TMP/foreign.pt"], "is not a vidcsl checkpoint (no 'model' entry)"),
    (["knn", "RUN", "optim.lr=1"], "override 'optim.lr=1' cannot take effect on a trained run"),
    (["probe", "RUN", "model.proj_out_dim=3"], "override 'model.proj_out_dim=3' cannot take effect"),
    (["knn", "RUN", "train.knn_k=0"], "config key 'train.knn_k' must be >= 1, got 0"),
    (["knn", "RUN", "--device", "tpu"], "argument --device: must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["probe", "RUN", "--device", MISSING_GPU], "--device "),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:2] + a[2:3]) for a, _ in CASES])
def test_user_error_exits_2_with_one_line(argv, message, tmp_path, digits_run, capsys):
    names = _files(tmp_path, digits_run)

    def fill(text):
        for name, value in names.items():
            text = text.replace(name, value)
        return text

    try:
        code = main([fill(a) for a in argv])
    except SystemExit as exit_:  # argparse refuses a malformed argument itself (status 2, usage + one line)
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"vidcsl {argv[0]}: error: "), err
    assert fill(message) in lines[0]


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import vidcsl.train.cli as train_cli

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(train_cli, "run_knn", broken)
    with pytest.raises(ZeroDivisionError):
        main(["knn", str(tmp_path)])
    # a ValueError that is not one of the project's user errors is a bug too
    monkeypatch.setattr(train_cli, "run_knn", lambda *a, **k: int("x"))
    with pytest.raises(ValueError, match="invalid literal"):
        main(["knn", str(tmp_path)])


def test_sigterm_outside_training_exits_3_in_one_line(monkeypatch, tmp_path, capsys):
    import vidcsl.train.cli as train_cli

    def slow(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        time.sleep(5)  # never reached: the signal stops the command here
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(train_cli, "run_knn", slow)
    assert main(["knn", str(tmp_path)]) == Preempted.exit_code == 3
    assert capsys.readouterr().err.strip() == (
        "vidcsl knn: stopped by SIGTERM; finished outputs are kept, rerun the command to continue")
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_cli_makes_idle_openmp_threads_sleep_unless_the_user_chose(user_value):
    """The console script's first import sets OMP_WAIT_POLICY=PASSIVE before torch loads libgomp (spinning
    threads beside a busy process made evaluation many times slower); a value the user set is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_value:
        env["OMP_WAIT_POLICY"] = user_value
    code = "import sys, vidcsl.cli, os; print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", user_value or "PASSIVE"]  # set before torch was imported


@pytest.mark.parametrize("config, method", [("digits_simclr.yaml", "supervised"),
                                            ("digits_supervised_at.yaml", "supervised_at")])
def test_supervise_keeps_a_config_that_already_trains_a_classifier(monkeypatch, config, method):
    """`vidcsl supervise` turns a contrastive config into its cross-entropy baseline, but must not silently
    replace adversarial training (supervised_at) by plain cross-entropy."""
    from pathlib import Path

    import vidcsl.train.cli as train_cli
    from vidcsl.config import load_config

    seen = {}

    def fake_run(args, extra=()):
        seen["method"] = load_config(args.config, [*args.overrides, *extra]).method.name
        return 0

    monkeypatch.setattr(train_cli, "_run_training", fake_run)
    path = Path(__file__).resolve().parents[2] / "configs" / config
    assert main(["supervise", str(path)]) == 0
    assert seen["method"] == method
