"""vidcsl.robustness.evaluate: metrics against hand-computed values, PGD accuracy against torchattacks,
and ``evaluate_run`` end-to-end on a tiny trained run (files written, report == JSON, eps sweep sane)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from vidcsl.robustness import evaluate as E


def test_representation_metrics_of_a_known_encoder():
    """Identity-like encoder on hand-made inputs: alignment / uniformity follow from the geometry."""

    class Pool(nn.Module):  # features = per-channel mean of (x - 0.5): unit vectors after normalising
        def forward(self, x):
            return (x - 0.5).flatten(2).mean(2)

    x = torch.full((4, 3, 2, 2), 0.5)
    x[0, 0] = x[2, 0] = 1.0  # direction e0 (class 0)
    x[1, 0] = x[3, 0] = 0.0  # direction -e0 (class 1)
    y = torch.tensor([0, 1, 0, 1])
    pairs = torch.stack([x, x.flip(0)], 1)  # view 2 = the opposite direction for every sample
    ecfg = E.EvalConfig(n_repr=4, batch_size=2, sensitivity_steps=1, progress=False)
    m = E.representation_metrics(Pool(), x, y, pairs, ecfg, torch.device("cpu"))
    assert m["alignment"] == pytest.approx(4.0)  # ||e0 - (-e0)||^2
    # pairs: 2 same-direction (d^2 = 0), 4 opposite (d^2 = 4) -> log((2 + 4 e^-8) / 6)
    assert m["uniformity"] == pytest.approx(math.log((2 + 4 * math.exp(-8)) / 6), rel=1e-6)
    assert m["sensitivity_random"] > 0


def test_cosine_histogram_counts_every_ordered_pair():
    z = torch.nn.functional.normalize(torch.randn(7, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    h = E.cosine_histogram(z, bins=10)
    assert sum(h["counts"]) == 7 * 6 and len(h["edges"]) == 11


def test_multiclip_accuracy_averages_logits_over_clips():
    class MeanSign(nn.Module):  # logits [-m, m] with m the clip's mean - 0.5
        def forward(self, x):
            m = x.flatten(1).mean(1) - 0.5
            return torch.stack([-m, m], 1)

    clips = torch.full((2, 3, 1, 2, 2, 2), 0.5)
    clips[0, 0] = 0.9  # video 0: one confident clip of class 1, two weakly class 0
    clips[0, 1:] = 0.4
    clips[1, :] = 0.3  # video 1: all class 0
    y = torch.tensor([1, 0])
    # video 0 mean logit for class 1: (0.4 - 0.1 - 0.1) / 3 > 0 -> class 1 (a single-clip vote would say 0)
    assert E.multiclip_accuracy(MeanSign(), clips, y, 4, torch.device("cpu")) == 1.0
    assert E.accuracy_of(MeanSign()(clips[:, 1]), y) == 0.5


def test_robust_accuracy_matches_torchattacks_pgd_without_random_start():
    torchattacks = pytest.importorskip("torchattacks")
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the model's initialisation
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    x = torch.rand(24, 3, 8, 8, generator=g)
    y = model(x).argmax(1)  # every sample starts correct, so the attack has something to break
    eps, steps = 8 / 255, 5
    ours = E.robust_accuracy(model, x, y, eps=eps, norm="linf", steps=steps, alpha_factor=2.5, random_start=False,
                             batch_size=10, device=torch.device("cpu"), seed=0)
    atk = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=False)
    ref = int((model(atk(x, y)).argmax(1) == y).sum()) / len(y)
    assert ours == pytest.approx(ref, abs=1e-9)
    assert ours < 1.0  # the attack did flip some predictions


def test_eval_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="norms"):
        E.eval_config_from_dict({"norms": ["l1"]})
    with pytest.raises(ValueError, match="severities"):
        E.eval_config_from_dict({}, ["severities=[0]"])
    with pytest.raises(ValueError, match="eval.n_sample"):
        E.eval_config_from_dict({"n_sample": 3})
    with pytest.raises(ValueError, match="corruptions"):
        E.eval_config_from_dict({"corruptions": ["rain"]})


def _table(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from vidcsl.config import load_config
    from vidcsl.train.trainer import Trainer

    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("configs/digits_simclr.yaml", [
        "train.max_steps=2", "train.epochs=1", "train.batch_size=32", "train.progress=false",
        "train.tensorboard=false", "train.knn_every=-1", "data.limit_train=96", "probe.epochs=2",
        "fn.detector=oracle", f"data.cache_dir={root / 'data'}"])
    Trainer(cfg, run_dir=root / "simclr").fit()
    return root / "simclr"


def test_evaluate_run_writes_files_and_report_matches_json(tiny_run):
    ecfg = E.eval_config_from_dict({
        "n_samples": 48, "linf_eps_255": [0, 2, 4, 8, 16], "l2_eps": [0, 0.25, 1.0], "pgd_steps": 5,
        "corruptions": ["gaussian_noise", "contrast"], "severities": [1, 5], "n_corruption": 24, "n_repr": 32,
        "sensitivity_steps": 2, "batch_size": 32, "progress": False})
    result = E.evaluate_run(tiny_run, ecfg)
    out = tiny_run / "eval"
    for name in ("eval.json", "report.md", "robust.csv", "corruptions.csv", "representation.csv",
                 "accuracy_vs_eps.png", "corruptions.png", "uniformity_hist.png"):
        assert (out / name).is_file(), name
    assert (tiny_run / "probe" / "classifier.pt").is_file()  # the run had no probe: one was trained
    saved = json.loads((out / "eval.json").read_text())
    assert saved["model_kind"] == "linear_probe" and saved["n_samples"] == 48
    for norm, entries in saved["robust"].items():
        assert entries[0]["eps"] == 0 and entries[0]["acc"] == saved["clean_acc"]  # exactly
        accs = [e["acc"] for e in entries]
        tol = 2 / saved["n_samples"]  # PGD is a heuristic: a larger ball may find one or two fewer
        assert all(b <= a + tol for a, b in zip(accs, accs[1:])), (norm, accs)
        assert accs[-1] < saved["clean_acc"], (norm, accs)  # the largest ball must hurt: eps is applied
    assert [e["eps"] for e in saved["robust"]["linf"]] == pytest.approx([v / 255 for v in (0, 2, 4, 8, 16)])
    assert [e["eps"] for e in saved["robust"]["l2"]] == pytest.approx([0, 0.25, 1.0])
    md = (out / "report.md").read_text()
    rows = _table(md, "| norm | eps")
    flat = [(n, e) for n, es in saved["robust"].items() for e in es]
    assert len(rows) == len(flat)
    for (norm, e), row in zip(flat, rows):
        assert row[0] == norm and row[3] == E.fmt(e["acc"])
    fam = dict((r[0], r[1]) for r in _table(md, "| family | acc"))
    assert fam == {k: E.fmt(v) for k, v in saved["corruptions"]["family_mean"].items()}
    assert set(saved["corruptions"]["family_mean"]) == {"noise", "weather"}
    det = saved["fn_detector_stats"]  # oracle detector: precision is 1 by construction
    assert det is not None and det["precision"] == pytest.approx(1.0)
    assert re.search(r"\| clean \|", md)
    assert result["clean_acc"] == saved["clean_acc"]
