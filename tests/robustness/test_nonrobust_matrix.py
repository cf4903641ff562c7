"""``vidcsl nonrobust`` end to end at a tiny budget, and the D_det / D_rand / D_NR builders.

Sources are two tiny runs on the embedded digits (an SL and a CSL run, a few steps each); the matrix
runs with 40 real training images, a couple of attack / matching steps and 2 training steps per target.
What is checked: the refusal of a non-robust D_R source (exit 2 naming its measured robust accuracy,
``--force`` goes through), no D_R without a robust source (the report says so), every cell of the
matrix in the Markdown, CSV and heat-maps, and cached sets / trained targets reused by a rerun.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidcsl.cli import main
from vidcsl.robustness.nonrobust import build_feature_dataset, build_targeted_dataset, targets_for
from vidcsl.robustness.nonrobust_matrix import chance_check

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _classifier(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 16), nn.Tanh(), nn.Linear(16, num_classes))


def _images(n=12, seed=1):
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ D_det / D_rand / D_NR


@pytest.mark.parametrize("rule", ["det", "rand"])
def test_targeted_sets_are_relabelled_to_their_targets_and_moved_towards_them(rule):
    f, x = _classifier(), _images()
    y = torch.arange(12) % 4
    new_x, new_y, hit = build_targeted_dataset(f, x, y, 4, rule=rule, steps=30, step_size=0.3, eps=3.0,
                                               batch_size=5, seed=3)
    assert torch.equal(new_y, targets_for(y, 4, rule, seed=3))
    if rule == "det":
        assert torch.equal(new_y, (y + 1) % 4)
    else:  # random targets: in range, seeded, not the det rule
        assert new_y.min() >= 0 and new_y.max() < 4 and not torch.equal(new_y, (y + 1) % 4)
        assert not torch.equal(new_y, targets_for(y, 4, "rand", seed=4))
    with torch.no_grad():
        before = F.cross_entropy(f(x), new_y, reduction="none")
        after = F.cross_entropy(f(new_x), new_y, reduction="none")
        assert (after < before).all()  # every sample moved towards its target
        assert torch.equal(hit, f(new_x).argmax(1) == new_y) and hit.float().mean() > 0.5
    assert ((new_x - x).flatten(1).norm(dim=1) <= 3.0 + 1e-5).all()
    assert new_x.min() >= 0 and new_x.max() <= 1


def test_non_robust_set_stays_in_the_ball_around_another_image_and_robust_set_does_not():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 8))
    x, y = _images(8), torch.arange(8)
    nr, lab = build_feature_dataset(g, x, y, robust=False, steps=30, step_size=0.3, eps=0.4, seed=2)
    r, _ = build_feature_dataset(g, x, y, robust=True, steps=30, step_size=0.3, eps=0.4, seed=2)
    d_nr = torch.cdist(nr.flatten(1), x.flatten(1))  # [i, j]: distance of new sample i to real image j
    start = d_nr.argmin(1)
    assert torch.equal(lab, y) and (start != torch.arange(8)).all()  # started from *another* image
    assert (d_nr.min(1).values <= 0.4 + 1e-5).all()
    moved = (r - x[start]).flatten(1).norm(dim=1)
    assert (moved > 0.4 + 1e-3).any()  # unconstrained: leaves the ball the non-robust set is held in

    # nr_eps = None is Ilyas et al.'s D_NR: the very matching of D_R, only through this (standard) encoder
    paper, _ = build_feature_dataset(g, x, y, robust=False, steps=30, step_size=0.3, eps=None, seed=2)
    assert torch.equal(paper, r)


def test_chance_check():
    c = chance_check(0.2, 10, 400)
    assert c["chance"] == 0.1 and c["bar"] == pytest.approx(0.1 + 3 * (0.09 / 400) ** 0.5)
    assert c["clearly_above"] and not chance_check(0.12, 10, 400)["clearly_above"]


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny SL and CSL runs on the embedded digits (a few optimiser steps each)."""
    from vidcsl.config import load_config
    from vidcsl.train.trainer import Trainer

    root = tmp_path_factory.mktemp("nonrobust")
    common = ["train.epochs=1", "train.max_steps=3", "train.batch_size=32", "data.limit_train=64",
              "data.num_workers=0", "train.knn_every=-1", "train.tensorboard=false", "train.progress=false",
              f"data.cache_dir={root / 'data'}", "train.device=cpu", "data.limit_eval=60", "probe.epochs=2"]
    out = {}
    for name, config in (("sl", "digits_supervised.yaml"), ("csl", "digits_simclr.yaml")):
        Trainer(load_config(CONFIGS / config, common), run_dir=root / name).fit()
        out[name] = root / name
    out["root"] = root
    return out


TINY = ["n_train=40", "match_steps=2", "attack_steps=3", "attack_eps=1.0", "attack_step_size=0.3", "eval_steps=2",
        "n_eval=40", "probe_epochs=2", "progress=false", "device=cpu", "target_overrides=[train.max_steps=2]",
        "epochs=1"]


def _run(args, capsys):
    code = main(["nonrobust", *args])
    return code, capsys.readouterr()


def test_robust_set_from_a_non_robust_source_is_refused_unless_forced(runs, capsys):
    out = runs["root"] / "refused"
    code, cap = _run([str(runs["sl"]), *TINY, "sets=[r]", "--robust-run", str(runs["csl"]), "--targets", "sl",
                      "--out", str(out)], capsys)
    assert code == 2
    m = re.search(r"refusing to build D_R from 'robust' .*measured robust accuracy is (\d\.\d+)", cap.err)
    assert m and float(m.group(1)) < 0.3 and "--force" in cap.err
    assert not (out / "sets").exists()  # refused before anything was built
    code, cap = _run([str(runs["sl"]), *TINY, "sets=[r]", "--robust-run", str(runs["csl"]), "--targets", "sl",
                      "--out", str(out), "--force"], capsys)
    assert code == 0, cap.err
    result = json.loads((out / "nonrobust.json").read_text())
    assert [s["key"] for s in result["sets"]] == ["r_robust"]
    assert any("FORCED" in n for n in result["notes"]) and "FORCED" in (out / "report.md").read_text()
    # the same source passes when the threshold it must reach is 0
    code, cap = _run([str(runs["sl"]), *TINY, "sets=[r]", "robust_threshold=0", "--robust-run", str(runs["csl"]),
                      "--targets", "sl", "--out", str(runs["root"] / "accepted")], capsys)
    assert code == 0 and not json.loads((runs["root"] / "accepted" / "nonrobust.json").read_text())["notes"]


def test_matrix_end_to_end_writes_every_cell_and_reuses_what_it_built(runs, capsys):
    out = runs["root"] / "matrix"
    opts = ["--targets", "sl,csl", "--out", str(out)]
    args = [str(runs["csl"]), *TINY, *opts]
    code, cap = _run(args, capsys)
    assert code == 0, cap.err
    result = json.loads((out / "nonrobust.json").read_text())
    keys = [s["key"] for s in result["sets"]]
    assert keys == ["nr_csl", "det_csl", "rand_csl"]  # no D_R without a robust source
    assert any("No D_R" in n for n in result["notes"]) and "No D_R" in (out / "report.md").read_text()
    assert "No D_R" in cap.out
    cells = {(c["set"], c["target"]): c for c in result["cells"]}
    assert set(cells) == {(k, t) for k in keys for t in ("sl", "csl")}
    for c in cells.values():
        assert 0 <= c["robust_acc"] <= c["clean_acc"] <= 1
    report = (out / "report.md").read_text()
    with open(out / "matrix_clean.csv") as fh:
        wide = list(csv.reader(fh))
    assert wide[0] == ["set", "sl", "csl"] and len(wide) == 1 + len(keys)
    for row, key in zip(wide[1:], keys):
        for value, t in zip(row[1:], ("sl", "csl")):
            assert float(value) == pytest.approx(cells[(key, t)]["clean_acc"])
            assert f"{cells[(key, t)]['clean_acc']:.4f}" in report
    with open(out / "matrix.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(cells)
    for png in ("heatmap_clean.png", "heatmap_robust.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"({png})" in report
    # sanity lines: D_det / D_rand judged for CSL, the paradigm that built them
    assert {s["set"] for s in result["sanity"]} == {"det_csl", "rand_csl"}
    assert all(s["paradigm"] == "csl" and "clearly_above" in s for s in result["sanity"])
    assert "Ilyas et al." in report and "63%" in report and "44%" in report
    # rerun: sets and trained targets reused
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "sets").glob("*.npz")}
    code, cap = _run(args, capsys)
    assert code == 0, cap.err
    again = json.loads((out / "nonrobust.json").read_text())
    assert all(s["provenance"]["reused"] for s in again["sets"])
    assert all(c["how"] == "kept" for c in again["cells"])
    assert {p.name: p.stat().st_mtime_ns for p in (out / "sets").glob("*.npz")} == stamps
    assert [c["clean_acc"] for c in again["cells"]] == [c["clean_acc"] for c in result["cells"]]
    # a different recipe rebuilds
    code, _ = _run([str(runs["csl"]), *TINY, "sets=[det]", "attack_steps=4", *opts], capsys)
    assert code == 0
    assert not json.loads((out / "nonrobust.json").read_text())["sets"][0]["provenance"]["reused"]


def test_bad_settings_fail_before_anything_trains(runs, capsys, tmp_path):
    code, cap = _run([str(runs["sl"]), "--targets", "sl,nope", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "nope" in cap.err and not (tmp_path / "x").exists()
    code, cap = _run([str(runs["sl"]), "sets=[nr,xx]", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "sets" in cap.err
    code, cap = _run([str(runs["sl"]), "n_train=1", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "n_train" in cap.err
    code, cap = _run([str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml" in cap.err


def test_help_documents_sources_and_the_refusal(capsys):
    with pytest.raises(SystemExit):
        main(["nonrobust", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--robust-run", "--force", "exit status 2", "robust accuracy", "D_det", "D_rand", "D_NR",
                   "never built from a standard run", "supervised_at"):
        assert phrase in text, phrase


def test_heatmap_writes_a_png_and_checks_its_shape(tmp_path):
    from vidcsl.report.heatmap import plot_heatmap

    path = plot_heatmap([[0.5, None], [0.1, 0.9]], ["a", "b"], ["x", "y"], tmp_path / "h.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2 rows of 2 values"):
        plot_heatmap([[0.5, 0.2], [0.1]], ["a", "b"], ["x", "y"], tmp_path / "bad.png", title="t")


@pytest.mark.parametrize("name", ["nonrobust_demo", "nonrobust_cifar10_resnet18"])
def test_shipped_matrix_configs_load_with_their_sources(name):
    """Every shipped matrix YAML passes its own checks, and every source and the targets' recipe is a
    training config that loads (dataset folders absent here are not checked); the robust source trains
    adversarially."""
    from vidcsl.config import load_config
    from vidcsl.robustness.nonrobust_matrix import check_matrix_config, load_matrix_config

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    mcfg = load_matrix_config(path)
    check_matrix_config(mcfg)
    methods = {s.name: load_config(s.config, [*s.overrides], check_paths=False).method.name
               for s in [*mcfg.sources, mcfg.robust_source]}
    assert methods[mcfg.robust_source.name] == "supervised_at"
    assert methods["sl"] == "supervised" and methods["csl"] == "simclr"
    if name == "nonrobust_cifar10_resnet18":  # the paper-scale matrix builds D_NR as Ilyas et al.: no ball
        assert mcfg.nr_eps is None
    load_config(mcfg.target_config, [*mcfg.target_overrides], check_paths=False)
