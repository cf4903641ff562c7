"""vidcsl.robustness.study / comparison and the study report: config checks, variants, budget sharing,
the "resolved" rule on synthetic outcome files with known answers, every report table with missing
values, and a tiny study end to end with two seeds (paired outcomes, intervals, report == JSON, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vidcsl.errors import ConfigError, DataError
from vidcsl.report import study_report as R
from vidcsl.robustness import comparison as C
from vidcsl.robustness import study as S
from vidcsl.robustness.outcomes import Outcomes, outcome_key
from vidcsl.robustness.stats import mcnemar

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NEW_VARIANTS = ("random_init", "byol", "simsiam", "vicreg", "barlow", "moco")


# ------------------------------------------------------------------------------------------- configs


def _write_study(tmp: Path, variants: list[str], extra: dict | None = None, track: dict | None = None) -> Path:
    raw = {
        "name": "tiny", "runs_dir": str(tmp / "runs"), "device": "cpu", "progress": False, "n_boot": 200,
        "eval": {"n_samples": 40, "linf_eps_255": [0, 8], "l2_eps": [0, 0.5], "pgd_steps": 2,
                 "corruptions": ["contrast"], "severities": [1], "n_corruption": 8, "n_repr": 16,
                 "sensitivity_steps": 1, "batch_size": 40, "num_workers": 0, "probe": ["probe.epochs=2"]},
        "tracks": [{"name": "images", "config": str(CONFIGS / "digits_simclr.yaml"), "variants": variants,
                    "overrides": ["train.max_steps=2", "train.epochs=1", "train.batch_size=32",
                                  "data.limit_train=64", "data.num_workers=0", "train.knn_every=-1",
                                  "train.tensorboard=false", f"data.cache_dir={tmp / 'data'}"], **(track or {})}],
        **(extra or {}),
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("variants,extra,track,match", [
    (["sl", "simclr_plus"], None, None, "unknown study variant"),
    (["sl"], {"headline_norm": "l1"}, None, "headline_norm"),
    (["sl", "csl"], {"seeds": [0, 0]}, None, "seeds"),
    (["sl"], None, {"variant_seeds": {"csl": [0]}}, "variant_seeds names"),
    (["sl"], None, {"variant_seeds": {"sl": [1, "x"]}}, "variant_seeds.sl"),
    (["sl"], {"csl_temperatures": [0.1, 0.1]}, None, "csl_temperatures"),
    (["sl"], {"csl_temperatures": [-1]}, None, "csl_temperatures"),
    (["sl"], {"eval": {"attacks": ["nope"]}}, None, "eval.attacks"),
    (["sl"], None, {"config": "nope.yaml"}, "nope.yaml"),
])
def test_study_config_errors_name_the_problem(tmp_path, variants, extra, track, match):
    with pytest.raises(ConfigError, match=match):
        S.load_study_config(_write_study(tmp_path, variants, extra, track))


def test_variants_new_ones_available_and_temperature_sweep(tmp_path):
    for v in NEW_VARIANTS:
        assert v in S.VARIANTS and S.available(v), v
    assert S.variant_spec("random_init").untrained and S.variant_spec("moco").paradigm == "contrastive"
    assert {S.variant_spec(v).paradigm for v in ("byol", "simsiam", "vicreg", "barlow")} == {"negative-free"}
    assert S.variant_spec("clae_fn").base == "clae" and S.variant_spec("csl_fn_topk").base == "csl"
    t = S.variant_spec("csl_t0.05")
    assert "method.temperature=0.05" in t.overrides and t.method == "simclr"
    with pytest.raises(ConfigError, match="csl_t"):
        S.variant_spec("csl_t")
    study = S.load_study_config(_write_study(tmp_path, ["sl", "csl"], {"csl_temperatures": [0.05, 0.5],
                                                                       "seeds": [3, 4]}))
    track = study.tracks[0]
    assert track.variants == ["sl", "csl", "csl_t0.05", "csl_t0.5"]
    cfg = S.variant_config(study, track, "csl_t0.05", S.sub_run_dir(study.runs_dir, "images", "csl_t0.05", 4), 4)
    assert cfg.method.temperature == 0.05 and cfg.train.seed == 4 and cfg.train.name == "seed4"
    jobs, _ = S.plan_jobs(study)
    assert [(j.variant, j.seed) for j in jobs][:3] == [("sl", 3), ("sl", 4), ("csl", 3)] and len(jobs) == 8
    assert all(j.run_dir == Path(study.runs_dir) / "images" / j.variant / f"seed{j.seed}" for j in jobs)
    assert len({j.ecfg.fingerprint() for j in jobs if j.variant != "sl"}) == 1  # one test subset for all seeds


@pytest.mark.parametrize("name", ["study_cifar10_resnet18.yaml", "study_ucf101_r3d18.yaml", "study_demo.yaml"])
def test_shipped_study_configs_load_with_seeds_and_new_variants(name):
    study = S.load_study_config(CONFIGS / name)
    if name != "study_demo.yaml":
        assert study.seeds == [0, 1, 2]
        assert {"random_init", "byol", "simsiam", "vicreg", "barlow", "moco"} <= set(study.tracks[0].variants)
    for t in study.tracks:
        for v in t.variants:
            cfg = S.variant_config(study, t, v, Path("/nonexistent") / v, study.track_seeds(t, v)[0],
                                   check_paths=False)
            assert cfg.method.name == S.variant_spec(v).method


def test_budget_sharing_is_read_off_the_configs(tmp_path):
    study = S.load_study_config(_write_study(tmp_path, ["sl", "csl"]))
    t = study.tracks[0]
    sl, csl = (S.variant_config(study, t, v, tmp_path / v) for v in ("sl", "csl"))
    share = S.budget_sharing(sl, csl)
    assert share["shared"]["train.epochs"] == 1 and share["shared"]["train.batch_size"] == 32
    assert share["augmentations"]["shared"] and share["optimiser"]["shared"] and not share["not_shared"]
    assert share["views_per_step"] == {"sl": 1, "csl": 2}
    assert set(share["differs"]) == {"method.name", "data.supervised_augment"}
    t.variant_overrides = {"sl": ["optim.lr=0.1", "train.epochs=2"]}
    share = S.budget_sharing(S.variant_config(study, t, "sl", tmp_path / "sl"), csl)
    assert not share["optimiser"]["shared"] and share["not_shared"]["train.epochs"] == [2, 1]
    lines = " ".join(R.sharing_lines({"budget_sharing": share}))
    assert "NOT shared" in lines and "train.epochs" in lines


# --------------------------------------------------------------------------------- synthetic sub-runs

N = 400
EPS = {"linf": [0.0, 4 / 255], "l2": [0.0, 0.5]}


def _eval_json(run_dir: Path, levels: list[str], protocols: dict[str, list[str]], *, rep: dict | None,
               sanity: bool | None = True, video: bool = False) -> dict:
    def level(p: str, lvl: str) -> dict:
        robust = {"pgd": {n: [{"eps": e, "eps_255": e * 255 if n == "linf" else None, "acc": 0.0, "n": N}
                              for e in es] for n, es in EPS.items()}}
        return {"n_samples": N, "clean_acc": 0.0, "robust": robust, "autoattack": None,
                "corruptions": {"mean": 0.5, "family_mean": {"noise": 0.5}} if p == "standard" else None,
                "sanity": None if sanity is None else {"pass": sanity, "checks": [
                    {"check": "large_eps", "attack": "pgd", "norm": "linf", "pass": sanity}]}}

    return {"run": str(run_dir), "method": "x", "fn_detector": "none", "is_video": video, "levels": levels,
            "primary_level": levels[0], "robust_attack": "pgd", "num_classes": 10, "split": "test",
            "n_samples": N, "representation": rep, "fn_detector_stats": None, "eval_config": {"n_samples": None},
            "attacks": {"sweep": ["pgd"], "steps": 5, "restarts": 1, "autoattack": None},
            "protocols": {p: {"levels": {lvl: level(p, lvl) for lvl in lvls}} for p, lvls in protocols.items()}}


def _fake_run(root: Path, variant: str, seed: int, ok: dict[str, np.ndarray], *, levels=("image",),
              protocols=None, rep=None, sanity=True, labels=None) -> C.SubRun:
    """A sub-run folder with eval.json + outcomes.npz: ``ok[measure]`` (per level and protocol alike)."""
    run_dir = root / variant / f"seed{seed}"
    protocols = protocols or {"standard": list(levels)}
    values = {}
    for p, lvls in protocols.items():
        for lvl in lvls:
            values[outcome_key(p, lvl, "clean")] = ok["clean"]
            for norm, es in EPS.items():
                for e in es:
                    values[outcome_key(p, lvl, "pgd", norm=norm, eps=e)] = ok["clean"] if e == 0 else ok[norm]
    label = np.arange(N) % 10 if labels is None else labels
    Outcomes(np.arange(N) * 3, label, values).save(run_dir / "eval" / "outcomes.npz")
    rep = {"uniformity": -1.0 - 0.1 * seed, "alignment": 0.5, "inter_intra_ratio": 1.2} if rep is None else rep
    ev = _eval_json(run_dir, list(levels), protocols, rep=rep or None, sanity=sanity, video=len(levels) > 1)
    (run_dir / "eval" / "eval.json").write_text(json.dumps(ev))
    return C.load_sub_run(variant, seed, run_dir)


def _outcomes(rng, p: float, n: int = N) -> np.ndarray:
    return rng.random(n) < p


def _known_runs(root: Path, levels=("image",)) -> dict[str, dict[int, C.SubRun]]:
    """sl far more robust than csl; csl_fn_topk = csl with as many fixes as breaks (gain exactly 0);
    csl_fn_oracle fixes half the samples sl gets right and csl does not (closes about half the gap)."""
    rng = np.random.default_rng(0)
    runs: dict[str, dict[int, C.SubRun]] = {}
    for seed in (0, 1):
        clean = _outcomes(rng, 0.9)
        sl, csl = clean & _outcomes(rng, 0.8), clean & _outcomes(rng, 0.35)
        topk = csl.copy()
        on, off = np.flatnonzero(csl)[:15], np.flatnonzero(clean & ~csl)[:15]
        topk[on], topk[off] = False, True
        oracle = csl.copy()
        gain = np.flatnonzero(sl & ~csl)
        oracle[gain[::2]] = True
        for v, robust in (("sl", sl), ("csl", csl), ("csl_fn_topk", topk), ("csl_fn_oracle", oracle)):
            runs.setdefault(v, {})[seed] = _fake_run(root, v, seed, {"clean": clean, "linf": robust, "l2": robust},
                                                     levels=levels, rep={"uniformity": {"sl": -1.5}.get(v, -1.0)
                                                                         - 0.01 * seed, "alignment": 0.5,
                                                                         "inter_intra_ratio": 1.1})
    return runs


HEADLINE = {"norm": "linf", "eps": 4.0}


def _question(track: dict, start: str, where: str | None = None) -> dict:
    return next(q for q in track["questions"] if q["question"].startswith(start)
                and (where is None or where in q["where"]))


def test_resolved_only_where_the_interval_excludes_zero(tmp_path):
    runs = _known_runs(tmp_path)
    track = C.analyse_track("images", "cfg.yaml", runs, headline=HEADLINE, n_boot=500, level=0.95)
    head = next(m for m in track["measures"] if m["key"] == "standard/image/pgd/linf/eps_255=4")
    gap = head["comparisons"]["gap"]
    # the estimate is the paired mean over both seeds and all samples, as computed from the files
    acc = {v: np.mean([runs[v][s].outcomes["standard/image/pgd/linf/eps_255=4"] for s in (0, 1)])
           for v in runs}
    assert gap["estimate"] == pytest.approx(acc["sl"] - acc["csl"]) and gap["seeds"] == [0, 1]
    assert gap["resolved"] and gap["low"] > 0.2 and gap["n_samples"] == N
    both = [np.stack([runs[v][s].outcomes["standard/image/pgd/linf/eps_255=4"] for s in (0, 1)]) for v in ("sl", "csl")]
    assert gap["mcnemar"] == mcnemar(*both).as_dict()
    topk = head["comparisons"]["fn_gain:csl_fn_topk"]
    assert topk["estimate"] == pytest.approx(0.0) and topk["low"] < 0 < topk["high"] and not topk["resolved"]
    assert not head["comparisons"]["gap_closed:csl_fn_topk"]["resolved"]
    closed = head["comparisons"]["gap_closed:csl_fn_oracle"]
    assert closed["resolved"] and 0.3 < closed["low"] < closed["estimate"] < closed["high"] < 0.7
    clean = next(m for m in track["measures"] if m["key"] == "standard/image/pgd/linf/eps_255=0")
    assert clean["comparisons"]["gap"]["estimate"] == 0 and not clean["comparisons"]["gap"]["resolved"]
    assert _question(track, "Is SL more robust")["answer"] == "yes"
    assert _question(track, "Does FN removal (CSL+FN oracle) close")["answer"] == "yes"
    q = _question(track, "Does FN removal (CSL+FN top-k) close")
    assert q["answer"] == "not resolved" and "contains 0" in q["why"]
    q = _question(track, "Does FN removal make CSL (SimCLR) more robust (CSL+FN top-k)")
    assert q["answer"] == "not resolved" and q["resolved_elsewhere"] == []
    assert any("l2 0.5" in w for w in _question(track, "Is SL more robust")["resolved_elsewhere"])
    q = _question(track, "Are CSL representations more uniform")
    assert q["answer"] == "no: the opposite is resolved" and q["interval"]["seeds"] == [0, 1]


def test_gap_closed_is_not_resolved_where_the_gap_is_not(tmp_path):
    runs = _known_runs(tmp_path)
    for seed, run in runs["sl"].items():  # sl becomes csl: no gap
        for key in list(run.outcomes.values):
            run.outcomes.values[key] = runs["csl"][seed].outcomes.values[key].copy()
    track = C.analyse_track("images", "cfg.yaml", runs, headline=HEADLINE, n_boot=300, level=0.95)
    q = _question(track, "Does FN removal (CSL+FN oracle) close")
    assert q["answer"] == "not resolved" and "gap itself is not resolved" in q["why"]
    assert _question(track, "Is SL more robust")["answer"] == "not resolved"


def test_sub_runs_with_different_test_labels_are_refused(tmp_path):
    runs = _known_runs(tmp_path)
    run = runs["csl"][1]
    run.outcomes.label = (run.outcomes.label + 1) % 10
    with pytest.raises(DataError, match="test splits differ"):
        C.analyse_track("images", "cfg.yaml", runs, headline=HEADLINE, n_boot=100, level=0.95)


def _study(tracks: list[dict]) -> dict:
    return {"name": "syn", "source": "syn.yaml", "runs_dir": "runs", "seeds": [0, 1], "tracks": tracks,
            "statistics": {"n_boot": 300, "confidence": 0.95, "resampling": "paired bootstrap", "rule": "x"},
            "headline": HEADLINE, "notes": ["a note"]}


def test_report_renders_every_table_with_missing_values(tmp_path):
    """A video track whose variants miss things (one seed, no representation, no sanity panel, an extra
    protocol for one variant only, no configs): every table and plot renders, gaps print as n/a."""
    root = tmp_path / "video"
    runs = _known_runs(root, levels=("clip", "video"))
    rng = np.random.default_rng(3)
    clean = _outcomes(rng, 0.9)
    runs["clae"] = {0: _fake_run(root, "clae", 0, {"clean": clean, "linf": clean & _outcomes(rng, 0.5),
                                                   "l2": clean}, levels=("clip", "video"), rep={}, sanity=None,
                                 protocols={"standard": ["clip", "video"], "adv_bn": ["clip"]})}
    runs["clae_fn"] = {0: _fake_run(root, "clae_fn", 0, {"clean": clean, "linf": clean, "l2": clean},
                                    levels=("clip", "video"), sanity=False,
                                    protocols={"standard": ["clip", "video"], "adv_bn": ["clip"]})}
    track = C.analyse_track("video", "v.yaml", runs, headline=HEADLINE, n_boot=200, level=0.95)
    assert track["budget_sharing"] is None and track["levels"] == ["clip", "video"]
    assert _question(track, "Is SL more robust", "standard/video")["answer"] == "yes"
    assert any("adv_bn/clip" in q["where"] for q in track["questions"])
    q = _question(track, "Is CLAE")
    assert "one seed" in q["why"] or q["resolved"]
    out = tmp_path / "report"
    report = R.write_study_report(_study([track]), out).read_text()
    for title in ("## What this budget resolves", "### Models by paradigm", "clip level", "video level",
                  "### Adversarial CSL under its own protocols", "### SL vs CSL at every eps",
                  "### Gap closed by FN removal", "### FN gain", "### Other paradigms minus CSL",
                  "### Mechanism", "### Sanity panel", "### Recipes", "What this budget cannot resolve"):
        assert title in report, title
    assert "| adversarial contrastive | clae | 0 |" in report and "n/a" in report
    assert "| clae | 0 | standard | clip | n/a | none |" in report  # no sanity panel
    assert "| clae_fn | 0 | standard | clip | FAIL | large_eps pgd linf |" in report
    assert "configs were not available, so what they share is not checked" in report
    assert all((out / f).is_file() for f in ("study.json", "study.csv", "comparisons.csv", "questions.csv",
                                               "video_accuracy_vs_eps.png", "video_uniformity_vs_robustness.png"))
    back = R.load_study(out / "study.json")
    assert back["tracks"][0]["measures"][1]["comparisons"]["gap"]["low"] is not None
    # the tables alone, on rows with every optional value missing
    empty = {**track, "variants": [{**track["variants"][0], "levels": {}, "representation": {}, "fn_precision": None,
                                    "fn_recall": None, "recipe_vs_csl": None, "corruption_family_mean": {}}],
             "sanity": [{"variant": "sl", "seed": 0, "protocol": "standard", "level": "clip", "pass": None,
                         "failed": []}], "questions": [{"question": "q?", "where": "w", "interval": None,
                                                        "answer": "not measured", "why": "x",
                                                        "resolved_elsewhere": []}]}
    text = R.main_table(empty)
    assert text.splitlines()[2].count("n/a") >= 8
    for fn in (R.question_rows, R.mechanism_rows, R.sanity_table, R.recipe_rows):
        _, rows = fn(empty)
        assert rows and any("n/a" in str(c) for r in rows for c in r), fn.__name__
    assert R.fmt_interval(None) == "n/a" and R.fmt_interval({"estimate": 0.5, "low": None}) == "0.500 [n/a]"
    assert R.fmt_interval({"estimate": 0.5, "low": 0.1, "high": 0.9, "resolved": True}) == "**0.500 [0.100, 0.900]**"


# --------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny study trained and evaluated once: random_init, sl, csl with seeds 0 and 1, csl_fn_oracle
    with seed 0 only."""
    tmp = tmp_path_factory.mktemp("tiny")
    path = _write_study(tmp, ["random_init", "sl", "csl", "csl_fn_oracle"], {"seeds": [0, 1], "headline_eps": 8},
                        {"variant_seeds": {"csl_fn_oracle": [0]}})
    report = S.run_study(S.load_study_config(path))
    return path, report


def test_tiny_study_pairs_seeds_and_samples_and_reports_the_intervals(tiny):
    path, report = tiny
    root = report.parent
    data = json.loads((root / "study.json").read_text())
    (track,) = data["tracks"]
    assert track["seeds"] == [0, 1]
    key = "standard/image/pgd/linf/eps_255=8"
    m = next(x for x in track["measures"] if x["key"] == key)
    assert set(m["accuracy"]) == {"random_init", "sl", "csl", "csl_fn_oracle"}
    assert m["accuracy"]["sl"]["seeds"] == [0, 1] and m["accuracy"]["csl_fn_oracle"]["seeds"] == [0]
    outs = {(v, s): Outcomes.load(S.sub_run_dir(root, "images", v, s) / "eval" / "outcomes.npz")
            for v in ("sl", "csl") for s in (0, 1)}
    assert all(np.array_equal(o.index, outs[("sl", 0)].index) for o in outs.values())  # one test subset
    ok = {v: np.stack([outs[(v, s)][key] for s in (0, 1)]) for v in ("sl", "csl")}
    gap = m["comparisons"]["gap"]
    assert gap["estimate"] == pytest.approx(ok["sl"].mean() - ok["csl"].mean())
    assert gap["low"] <= gap["estimate"] <= gap["high"] and gap["seeds"] == [0, 1] and gap["n_samples"] == 40
    assert gap["mcnemar"] == mcnemar(ok["sl"], ok["csl"]).as_dict()
    assert m["comparisons"]["fn_gain:csl_fn_oracle"]["seeds"] == [0]  # the seeds both variants have
    untrained = json.loads((S.sub_run_dir(root, "images", "random_init", 1) / "metrics.json").read_text())
    assert untrained["untrained"] and untrained["global_step"] == 0
    text = report.read_text()
    q = _question(track, "Is SL more robust")
    row = next(line for line in text.splitlines() if line.startswith("| Is SL more robust"))
    assert R.fmt_interval(q["interval"]) in row and q["answer"] in row
    assert f"| sl | 0,1 | {R.fmt_interval(track['variants'][1]['levels']['image']['clean'], bold_resolved=False)}" in text
    for name in ("images_accuracy_vs_eps.png", "images_differences_vs_eps.png", "images_uniformity_vs_robustness.png"):
        assert (root / name).is_file(), name
    assert "Shared budgets (checked on the sub-runs' configs)" in text and "train.epochs = 1" in text


def test_tiny_study_rerun_keeps_everything_and_refuses_a_changed_recipe(tiny):
    path, report = tiny
    root = report.parent
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("images/*/seed*/eval/eval.json")}
    assert len(stamps) == 7
    S.run_study(S.load_study_config(path))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert sum("kept" in n for n in json.loads((root / "study.json").read_text())["notes"]) == 7
    changed = S.load_study_config(path)
    changed.tracks[0].overrides.append("optim.lr=0.01")
    with pytest.raises(ValueError, match="different config"):
        S.run_study(changed)


def test_cli_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    from vidcsl.cli import main

    assert main(["study", str(_write_study(tmp_path, ["sl", "nope"]))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidcsl study: error:") and "nope" in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path / "no_run"), "n_samples=0"]) == 2
    assert "eval.n_samples" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses an unknown device before anything loads
        main(["evaluate", str(tmp_path), "--device", "tpu"])
    assert "--device" in capsys.readouterr().err

    def boom(*a, **k):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(S, "run_study", boom)
    with pytest.raises(ValueError, match="a bug"):
        main(["study", str(_write_study(tmp_path, ["sl"]))])
