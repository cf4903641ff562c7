"""vidcsl.robustness.evaluate / measures: the sweep against torchattacks sample by sample, video-level
attacks inside every clip's ball, summaries and the sanity panel from outcomes, settings refused by name
before anything runs, and ``evaluate_run`` end to end on tiny image, video and adversarial runs (files,
report == JSON == outcomes, probe accuracy == clean accuracy at both video levels, protocols)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from vidcsl.attacks import ATTACKS, robust_sweep
from vidcsl.errors import ConfigError
from vidcsl.report.tables import fmt
from vidcsl.robustness import evaluate as E
from vidcsl.robustness import measures as M
from vidcsl.robustness.outcomes import Outcomes, outcome_key

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------- measures


def test_representation_metrics_of_a_known_encoder():
    """Identity-like encoder on hand-made inputs: alignment / uniformity follow from the geometry."""

    class Pool(nn.Module):  # features = per-channel mean of (x - 0.5): unit vectors after normalising
        def forward(self, x):
            return (x - 0.5).flatten(2).mean(2)

    x = torch.full((4, 3, 2, 2), 0.5)
    x[0, 0] = x[2, 0] = 1.0  # direction e0 (class 0)
    x[1, 0] = x[3, 0] = 0.0  # direction -e0 (class 1)
    y = torch.tensor([0, 1, 0, 1])
    acc = M.RepresentationAccumulator(Pool(), 4, eps=8 / 255, steps=1, seed=0, device=CPU)
    acc.add(x[:3], y[:3])  # streamed in two batches; a third is beyond n and ignored
    acc.add(x[3:], y[3:])
    acc.add(x, y)
    acc.add_pairs(x, x.flip(0))  # view 2 = the opposite direction for every sample
    m = acc.result()
    assert m["n_samples"] == 4 and m["alignment"] == pytest.approx(4.0)  # ||e0 - (-e0)||^2
    # pairs: 2 same-direction (d^2 = 0), 4 opposite (d^2 = 4) -> log((2 + 4 e^-8) / 6)
    assert m["uniformity"] == pytest.approx(math.log((2 + 4 * math.exp(-8)) / 6), rel=1e-6)
    assert m["sensitivity_random"] > 0
    assert sum(m["cosine_hist"]["counts"]) == 4 * 3


class MeanSign(nn.Module):  # logits [-m, m] with m the clip's mean - 0.5
    def forward(self, x):
        m = x.flatten(1).mean(1) - 0.5
        return torch.stack([-m, m], 1)


def test_video_level_averages_logits_over_clips_and_clip_level_is_the_centre_clip():
    clips = torch.full((2, 3, 1, 2, 2, 2), 0.5)
    clips[0, 0] = 0.9  # video 0: one confident clip of class 1, two weakly class 0
    clips[0, 1:] = 0.4
    clips[1, :] = 0.3  # video 1: all class 0
    y = torch.tensor([1, 0])
    video = M.VideoLevel(MeanSign())
    # video 0 mean logit for class 1: (0.4 - 0.1 - 0.1) / 3 > 0 -> class 1 (its centre clip alone says 0)
    assert M.correct(video, clips, y).tolist() == [True, True]
    inputs = M.level_inputs(clips, ["clip", "video"])
    assert torch.equal(inputs["clip"], clips[:, 1]) and inputs["video"] is clips
    assert M.correct(MeanSign(), inputs["clip"], y).tolist() == [False, True]
    changed = clips.clone()
    changed[0, 2] = 0.0  # one clip of video 0 changed: its video logits change, video 1's do not
    before, after = video(clips), video(changed)
    assert not torch.allclose(before[0], after[0]) and torch.equal(before[1], after[1])


def _tiny_image_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


class ClipSpy(nn.Module):
    """A clip classifier that records every clip it sees (to check the attack's perturbations)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_video_level_attack_keeps_every_clip_in_its_own_ball(norm, eps):
    torch.manual_seed(0)
    spy = ClipSpy()
    clips = torch.rand(6, 3, 3, 2, 4, 4, generator=torch.Generator().manual_seed(1))  # (B, K, C, T, H, W)
    video = M.VideoLevel(spy).eval()
    y = video(clips).argmax(1)
    spy.seen.clear()
    res = robust_sweep(video, clips, y, norm=norm, eps_list=[0.0, eps], steps=3, random_start=True,
                   generator=torch.Generator().manual_seed(0))
    originals = clips.flatten(0, 1)  # every clip of every video
    seen = torch.cat(spy.seen)
    assert seen.shape[0] > originals.shape[0]  # the attack ran (clean pass + attack steps)
    diff = (seen[:, None] - originals[None]).flatten(2)
    dist = diff.abs().amax(2) if norm == "linf" else diff.norm(dim=2)
    assert (dist.min(1).values <= eps + 1e-5).all()  # each clip seen lies in the ball of one original clip
    assert res[0.0].all() and res[eps].dtype == torch.bool


def _outcomes(keys: dict[str, list[bool]], n: int = 4) -> Outcomes:
    return Outcomes(np.arange(n) + 10, np.zeros(n), {k: np.array(v, dtype=bool) for k, v in keys.items()})


def _plan(**kw) -> M.MeasurePlan:
    base = dict(classifiers={}, levels=["image"], sweeps=[M.Sweep("pgd", "linf", [0.0, 2 / 255], [64 / 255])],
                num_classes=3, sanity_eps={"linf": 64 / 255}, sanity_max_acc=0.02)
    return M.MeasurePlan(**{**base, **kw})


def test_summary_and_sanity_panel_come_from_the_outcomes():
    key = lambda m, **k: outcome_key("standard", "image", m, **k)  # noqa: E731
    good = _outcomes({key("clean"): [1, 1, 1, 0], key("pgd", norm="linf", eps=0): [1, 1, 1, 0],
                      key("pgd", norm="linf", eps=2 / 255): [1, 0, 1, 0],
                      key("pgd", norm="linf", eps=64 / 255): [0, 0, 0, 0],
                      key("autoattack", norm="linf", eps=2 / 255): [1, 0, 0, 0],
                      key("corruption", corruption="contrast", severity=1): [1, 0]})
    plan = _plan(autoattack={"norm": "linf", "eps": 2 / 255, "version": "standard"}, corruptions=["contrast"],
                 severities=[1])
    s = M.summarise_level(good, "standard", "image", plan)
    assert s["clean_acc"] == 0.75 and s["n_samples"] == 4
    assert [(e["eps_255"], e["acc"]) for e in s["robust"]["pgd"]["linf"]] == [(0, 0.75), (2, 0.5)]  # not 64
    assert s["autoattack"]["acc"] == 0.25 and s["corruptions"]["mean"] == 0.5
    assert s["corruptions"]["n_samples"] == 2 and s["sanity"]["pass"]
    assert [c["check"] for c in s["sanity"]["checks"]] == ["non-increasing in eps", "near 0 at a large eps",
                                                           "autoattack <= pgd"]
    # gradient masking's signatures: accuracy up with eps, far from 0 at a large eps, AutoAttack above PGD
    bad = _outcomes({key("clean"): [1, 1, 1, 0], key("pgd", norm="linf", eps=0): [1, 1, 1, 0],
                     key("pgd", norm="linf", eps=2 / 255): [1, 0, 0, 0],
                     key("pgd", norm="linf", eps=64 / 255): [1, 1, 0, 0],
                     key("autoattack", norm="linf", eps=2 / 255): [1, 1, 0, 0]})
    checks = M.summarise_level(bad, "standard", "image", plan)["sanity"]["checks"]
    assert [c["pass"] for c in checks] == [False, False, False]
    assert checks[1]["acc"] == 0.5 and checks[2]["autoattack"] == 0.5 and checks[2]["reference"] == 0.25


# ------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("raw,overrides,key", [
    ({"norms": ["l1"]}, [], "norms"),
    ({}, ["severities=[0]"], "severities"),
    ({}, ["severities=[]"], "severities"),
    ({"n_sample": 3}, [], "eval.n_sample"),
    ({"corruptions": ["rain"]}, [], "corruptions"),
    ({}, ["linf_eps_255=[]"], "linf_eps_255"),
    ({"norms": ["l2"], "l2_eps": []}, [], "l2_eps"),
    ({}, ["l2_eps=[0,0.5,0.5]"], "l2_eps"),
    ({}, ["linf_eps_255=[0,-1]"], "linf_eps_255"),
    ({}, ["attacks=[pgd,deepfool]"], "attacks"),
    ({}, ["attacks=[autoattack]"], "attacks"),
    ({"norms": ["l2"]}, ["attacks=[pgd,autoattack]"], "attacks"),
    ({}, ["restarts=0"], "restarts"),
    ({}, ["protocols=[adv_bn]"], "protocols"),
    ({}, ["levels=[clip,frame]"], "levels"),
    ({}, ["video_clips=1"], "video_clips"),
    ({}, ["video_level_measures=[everything]"], "video_level_measures"),
    ({}, ["probe=[model.encoder=resnet18]"], "eval.probe"),
    ({}, ["probe=[probe.epochs=0]"], "eval.probe"),
    ({}, ["device=tpu"], "eval.device"),
    ({}, ["sanity_max_acc=2"], "sanity_max_acc"),
    ({}, ["pgd_steps=0"], "pgd_steps"),
])
def test_eval_config_rejects_bad_values_by_name(raw, overrides, key):
    with pytest.raises(ConfigError, match=key):
        E.eval_config_from_dict(raw, overrides)


def test_unknown_attack_names_the_known_ones():
    with pytest.raises(ConfigError) as err:
        E.eval_config_from_dict({}, ["attacks=[pgd,deepfool]"])
    assert all(name in str(err.value) for name in ATTACKS)


def test_bad_settings_fail_before_anything_loads(tmp_path):
    """An empty eps list used to fail after minutes, in plotting; now before the run is even looked for."""
    with pytest.raises(ConfigError, match="linf_eps_255"):
        E.evaluate_run(tmp_path / "no_such_run", E.EvalConfig(linf_eps_255=[]))
    with pytest.raises(ConfigError, match="attacks"):
        E.evaluate_run(tmp_path / "no_such_run", E.EvalConfig(attacks=["pgd", "nope"]))


def test_a_supervised_run_refuses_probe_overrides():
    from vidcsl.robustness.protocols import build_protocols

    method = SimpleNamespace(encoder=nn.Identity(), classifier=nn.Identity())
    cfg = SimpleNamespace(method=SimpleNamespace(name="supervised"))
    with pytest.raises(ConfigError, match="eval.probe"):
        build_protocols(method, cfg, None, E.Path("run"), E.EvalConfig(probe=["probe.epochs=3"]), False, CPU)


# ------------------------------------------------------------------------------------------- the report


def test_run_report_renders_every_table_with_missing_values(tmp_path):
    from vidcsl.report.run_report import write_run_report

    level = {"n_samples": 5, "clean_acc": 0.6, "autoattack": None, "corruptions": None, "sanity": None,
             "robust": {"pgd": {"linf": [{"eps": 0.0, "eps_255": 0.0, "acc": 0.6, "n": 5},
                                         {"eps": 2 / 255, "eps_255": 2.0, "acc": None, "n": 5}]}}}
    result = {"run": "r", "method": "simclr", "fn_detector": "none", "encoder": "e", "dataset": "d",
              "model_kind": "linear_probe", "n_samples": 5, "split": "test", "is_video": True, "video_clips": 3,
              "protocols": {"standard": {"description": "x", "probe": None, "levels": {"clip": level,
                                                                                         "video": level}}},
              "protocols_skipped": {"adv_bn": "no dual BN"},
              "attacks": {"sweep": ["pgd"], "steps": 2, "alpha_factor": 2.5, "random_start": True, "restarts": 1,
                          "autoattack": None},
              "outcomes": {"file": "outcomes.npz", "n_samples": 5, "n_keys": 4},
              "representation": {"alignment": None, "uniformity": float("nan"), "inter_intra_ratio": None,
                                 "sensitivity_random": 0.1, "sensitivity_adversarial": 0.2,
                                 "cosine_hist": {"edges": [-1, 0, 1], "counts": [1, 2]}},
              "fn_detector_stats": None, "notes": []}
    md = write_run_report(result, tmp_path).read_text()
    assert "| standard | video | 5 | 0.6000 | n/a | n/a | n/a |" in md
    assert "`adv_bn`: not measured (no dual BN)" in md and "centre clip" in md
    for name in ("accuracy.csv", "robust.csv", "corruptions.csv", "sanity.csv", "uniformity_hist.png"):
        assert (tmp_path / name).is_file(), name
    assert "## Plots" in md

    # A study's sub-runs: the same tables and report, no per-model PNGs and no links to them.
    bare = tmp_path / "bare"
    md = write_run_report(result, bare, plots=False).read_text()
    assert "| standard | video | 5 | 0.6000 | n/a | n/a | n/a |" in md and "## Plots" not in md
    assert (bare / "robust.csv").is_file() and not list(bare.glob("*.png"))


# ---------------------------------------------------------------------------------------- end to end


def _table(md: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [c.strip() for c in lines[i].strip("|").split("|")], rows


def _train(root, name, config, extra=()):
    from vidcsl.config import load_config
    from vidcsl.train.trainer import Trainer

    cfg = load_config(config, [
        "train.max_steps=2", "train.epochs=1", "train.batch_size=32", "train.progress=false",
        "train.tensorboard=false", "train.knn_every=-1", "data.limit_train=96", "probe.epochs=2",
        "data.num_workers=0", f"data.cache_dir={root / 'data'}", *extra])
    Trainer(cfg, run_dir=root / name).fit()
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def _cheap(**kw) -> E.EvalConfig:
    base = {"norms": ["linf"], "linf_eps_255": [0], "corruptions": [], "n_repr": 16, "sensitivity_steps": 1,
            "batch_size": 64, "progress": False, "sanity_linf_eps_255": None, "num_workers": 0}
    return E.eval_config_from_dict({**base, **kw})


def test_evaluate_run_writes_files_and_report_json_outcomes_agree(runs):
    run = _train(runs, "simclr", "configs/digits_simclr.yaml", ["fn.detector=oracle"])
    ecfg = E.eval_config_from_dict({
        "n_samples": 48, "linf_eps_255": [0, 2, 8, 16], "l2_eps": [0, 0.25, 1.0], "pgd_steps": 5,
        "attacks": ["pgd", "autoattack"], "autoattack_eps_255": 16,
        "corruptions": ["gaussian_noise", "contrast"], "severities": [1, 5], "n_corruption": 24, "n_repr": 32,
        "sensitivity_steps": 2, "batch_size": 32, "progress": False, "num_workers": 0})
    result = E.evaluate_run(run, ecfg)
    out = run / "eval"
    for name in ("eval.json", "outcomes.npz", "report.md", "accuracy.csv", "robust.csv", "corruptions.csv",
                 "sanity.csv", "representation.csv", "accuracy_vs_eps_linf.png", "accuracy_vs_eps_l2.png",
                 "corruptions.png", "uniformity_hist.png"):
        assert (out / name).is_file(), name
    assert (run / "probe" / "classifier.pt").is_file()  # the run had no probe: one was trained
    saved = json.loads((out / "eval.json").read_text())
    assert saved["model_kind"] == "linear_probe" and saved["n_samples"] == 48 and saved["levels"] == ["image"]
    assert set(saved["protocols"]) == {"standard"} and set(saved["protocols_skipped"]) == {"adv_bn", "robust_probe"}
    outcomes = Outcomes.load(out / "outcomes.npz")
    assert len(outcomes) == 48 and len(set(outcomes.index.tolist())) == 48
    level = saved["protocols"]["standard"]["levels"]["image"]
    assert saved["clean_acc"] == level["clean_acc"] == outcomes.accuracy("standard/image/clean")
    for norm, entries in saved["robust"].items():
        assert entries[0]["eps"] == 0 and entries[0]["acc"] == saved["clean_acc"]  # exactly
        accs = [e["acc"] for e in entries]
        assert all(b <= a for a, b in zip(accs, accs[1:])), (norm, accs)  # the sweep is cumulative
        assert accs[-1] < saved["clean_acc"], (norm, accs)  # the largest ball must hurt: eps is applied
        for e in entries:
            assert e["acc"] == outcomes.accuracy(outcome_key("standard", "image", "pgd", norm=norm, eps=e["eps"]))
    assert [e["eps"] for e in saved["robust"]["linf"]] == pytest.approx([v / 255 for v in (0, 2, 8, 16)])
    assert saved["autoattack"]["acc"] == outcomes.accuracy("standard/image/autoattack/linf/eps_255=16")
    assert outcomes["standard/image/corruption/contrast/severity=5"].shape == (24,)
    assert "standard/image/pgd/linf/eps_255=64" in outcomes  # the sanity panel's large eps
    checks = {c["check"]: c for c in saved["sanity"]["checks"]}
    assert checks["autoattack <= pgd"]["autoattack"] == saved["autoattack"]["acc"]
    md = (out / "report.md").read_text()
    _, rows = _table(md, "| protocol | level | attack | norm | eps")
    flat = [(n, e) for n, es in saved["robust"].items() for e in es]
    assert len(rows) == len(flat)
    for (norm, e), row in zip(flat, rows):
        assert row[3] == norm and row[6] == fmt(saved["clean_acc"]) and row[7] == fmt(e["acc"])
    _, fam = _table(md, "| protocol | level | family")
    assert {r[2]: r[4] for r in fam} == {k: fmt(v) for k, v in saved["corruptions"]["family_mean"].items()}
    _, sanity = _table(md, "| protocol | level | check")
    assert [r[-1] for r in sanity] == ["pass" if c["pass"] else "FAIL" for c in saved["sanity"]["checks"]]
    det = saved["fn_detector_stats"]  # oracle detector: precision is 1 by construction
    assert det is not None and det["precision"] == pytest.approx(1.0)
    assert result["clean_acc"] == saved["clean_acc"]
    # the probe's reported test accuracy is the evaluation's clean accuracy on the same (whole) split
    whole = E.evaluate_run(run, _cheap(n_samples=None, probe=["probe.epochs=2"]), out_dir=runs / "simclr_whole")
    probe = json.loads((run / "probe" / "probe.json").read_text())
    assert whole["n_samples"] > 48 and whole["clean_acc"] == probe["levels"]["image"]["test_acc"]
    assert not whole["notes"]  # the stored probe matched the settings: not retrained


def test_video_probe_and_evaluation_share_the_view_protocol_at_both_levels(runs):
    run = _train(runs, "video", "configs/video_simclr.yaml", ["data.limit_train=48", "train.batch_size=16"])
    ecfg = _cheap(n_samples=None, linf_eps_255=[0, 8], pgd_steps=1, video_clips=3, corruptions=["frame_shuffle"],
                  severities=[1], n_corruption=8)
    result = E.evaluate_run(run, ecfg)
    probe = json.loads((run / "probe" / "probe.json").read_text())
    assert probe["settings"]["view_protocol"]["clips"] == 3
    levels = result["protocols"]["standard"]["levels"]
    assert result["levels"] == ["clip", "video"] and result["n_samples"] == levels["video"]["n_samples"] > 8
    for lvl in ("clip", "video"):
        assert levels[lvl]["clean_acc"] == probe["levels"][lvl]["test_acc"], lvl
    assert result["clean_acc_multiclip"] == levels["video"]["clean_acc"]
    outcomes = Outcomes.load(run / "eval" / "outcomes.npz")
    assert outcomes["standard/video/pgd/linf/eps_255=8"].shape == (result["n_samples"],)
    assert outcomes["standard/video/corruption/frame_shuffle/severity=1"].shape == (8,)
    assert levels["video"]["robust"]["pgd"]["linf"][-1]["acc"] <= levels["video"]["clean_acc"]


def test_adversarial_csl_is_also_evaluated_under_its_own_protocols(runs):
    run = _train(runs, "clae", "configs/digits_clae.yaml", ["data.limit_eval=64"])
    kw = dict(n_samples=24, linf_eps_255=[0, 8], pgd_steps=1, robust_probe_steps=1, robust_probe_epochs=1,
              robust_probe_n_train=32, probe=["probe.epochs=1"])
    result = E.evaluate_run(run, _cheap(**kw))
    assert set(result["protocols"]) == {"standard", "adv_bn", "robust_probe"} and not result["protocols_skipped"]
    robust = json.loads((run / "probe_robust" / "probe.json").read_text())["settings"]
    assert robust["robust"]["steps"] == 1 and robust["features"] == "clean_bn"
    adv = json.loads((run / "probe_adv_bn" / "probe.json").read_text())["settings"]
    assert adv["features"] == "adversarial_bn"
    md = (run / "eval" / "report.md").read_text()
    _, rows = _table(md, "| protocol | level | n | clean")
    assert [r[0] for r in rows] == ["standard", "adv_bn", "robust_probe"]
    # same settings: no probe is retrained; another probe setting retrains them (applied, never ignored)
    stamps = {d: (run / d / "probe.json").stat().st_mtime_ns for d in ("probe", "probe_adv_bn", "probe_robust")}
    assert not E.evaluate_run(run, _cheap(**kw))["notes"]
    assert all((run / d / "probe.json").stat().st_mtime_ns == t for d, t in stamps.items())
    again = E.evaluate_run(run, _cheap(**{**kw, "probe": ["probe.epochs=1", "probe.lr=0.05"]}))
    assert len(again["notes"]) == 3 and all("other settings" in n for n in again["notes"])
    assert json.loads((run / "probe" / "probe.json").read_text())["settings"]["probe"]["lr"] == 0.05


def test_attack_that_cannot_run_a_norm_is_refused_before_anything_runs():
    """cw-l2 has no L-inf form: asking for it in an L-inf sweep fails when the settings are read."""
    with pytest.raises(ConfigError, match=r"eval\.attacks.*cw-l2.*norms"):
        E.eval_config_from_dict({}, ["attacks=[pgd,cw-l2]", "norms=[linf]"])
    E.eval_config_from_dict({}, ["attacks=[pgd,cw-l2]", "norms=[l2]", "l2_eps=[0,0.5]"])  # fits: accepted
