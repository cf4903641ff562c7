"""vidcsl.robustness.study: gap arithmetic, config checks, and a tiny study end-to-end on the embedded
digits whose Markdown report must print exactly the numbers of its JSON; a rerun retrains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vidcsl.report.tables import fmt
from vidcsl.robustness import study as S

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_gap_closed_hand_values_and_guards():
    value, why = S.gap_closed(0.7, 0.3, 0.5, 0.02)
    assert value == pytest.approx(0.5) and why == ""
    value, why = S.gap_closed(0.7, 0.3, 0.2, 0.02)
    assert value == pytest.approx(-0.25)  # FN removal made it worse: reported as measured
    for sl, csl in ((0.31, 0.30), (0.2, 0.4)):  # gap too small, or CSL more robust than SL
        value, why = S.gap_closed(sl, csl, 0.5, 0.02)
        assert value is None and why.startswith("n/a") and "min_gap" in why
    assert S.gap_closed(None, 0.3, 0.5, 0.02)[0] is None
    # with a sample count the floor is two binomial standard errors: 2 sqrt((.21 + .21) / 100) = 0.1296
    value, why = S.gap_closed(0.7, 0.6, 0.65, 0.02, n=100)
    assert value is None and "standard errors" in why
    assert S.gap_closed(0.7, 0.3, 0.5, 0.02, n=100)[0] == pytest.approx(0.5)


def test_robust_at_finds_eps_in_either_unit():
    ev = {"robust": {"linf": [{"eps": 2 / 255, "eps_255": 2.0, "acc": 0.4}], "l2": [{"eps": 0.25, "acc": 0.6}]}}
    assert S.robust_at(ev, "linf", 2) == 0.4 and S.robust_at(ev, "l2", 0.25) == 0.6
    assert S.robust_at(ev, "linf", 4) is None


def _write_study(tmp: Path, variants: list[str], extra: dict | None = None) -> Path:
    raw = {
        "name": "tiny", "runs_dir": str(tmp / "runs"), "device": "cpu", "progress": False, "min_gap": 0.0,
        "eval": {"n_samples": 32, "linf_eps_255": [0, 8], "l2_eps": [0, 0.5], "pgd_steps": 2,
                 "corruptions": ["contrast"], "severities": [1], "n_corruption": 16, "n_repr": 16,
                 "sensitivity_steps": 1, "batch_size": 32, "probe": ["probe.epochs=2"]},
        "tracks": [{"name": "images", "config": str(CONFIGS / "digits_simclr.yaml"), "variants": variants,
                    "overrides": ["train.max_steps=2", "train.epochs=1", "train.batch_size=32",
                                  "data.limit_train=64", "train.knn_every=-1", "train.tensorboard=false",
                                  f"data.cache_dir={tmp / 'data'}"]}],
        **(extra or {}),
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_study_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        S.load_study_config(_write_study(tmp_path, ["sl", "simclr_plus"]))
    path = _write_study(tmp_path, ["sl"])
    raw = yaml.safe_load(path.read_text())
    raw["tracks"][0]["config"] = "nope.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="nope.yaml"):
        S.load_study_config(path)
    with pytest.raises(ValueError, match="headline_norm"):
        S.load_study_config(_write_study(tmp_path, ["sl"]), ["headline_norm=l1"])


def _main_table(md: str, track: str) -> tuple[list[str], list[list[str]]]:
    lines = md.splitlines()
    start = lines.index(f"## Track `{track}`")
    i = next(k for k in range(start, len(lines)) if lines[k].startswith("| variant | clean"))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


def test_tiny_study_report_matches_json_and_resumes(tmp_path):
    path = _write_study(tmp_path, ["sl", "csl", "csl_fn_oracle"], {"headline_eps": 8})
    report = S.run_study(S.load_study_config(path))
    root = tmp_path / "runs"
    assert report == root / "report.md"
    data = json.loads((root / "study.json").read_text())
    for name in ("study.csv", "images_accuracy_vs_eps.png", "images_uniformity_corruptions.png"):
        assert (root / name).is_file(), name
    (track,) = data["tracks"]
    header, rows = _main_table(report.read_text(), "images")
    assert header == [h for h, _ in S.MAIN_COLUMNS]
    assert [r[0] for r in rows] == ["sl", "csl", "csl_fn_oracle"]
    for row, rec in zip(rows, track["rows"]):
        for cell, (_, key) in zip(row[1:], S.MAIN_COLUMNS[1:]):
            assert cell == fmt(rec[key]), (rec["variant"], key)
    by = {r["variant"]: r for r in track["rows"]}
    # the JSON's derived numbers follow from the per-run eval files
    evals = {v: json.loads((root / "images" / v / "eval" / "eval.json").read_text()) for v in by}
    ra = {v: S.robust_at(e, "linf", 8) for v, e in evals.items()}
    assert track["robustness_gap"] == pytest.approx(ra["sl"] - ra["csl"])
    expect, _ = S.gap_closed(ra["sl"], ra["csl"], ra["csl_fn_oracle"], 0.0, evals["csl"]["n_samples"])
    assert by["csl_fn_oracle"]["gap_closed"] == (None if expect is None else pytest.approx(expect))
    assert by["csl_fn_oracle"]["fn_precision"] == pytest.approx(1.0)  # oracle: every detection is right
    assert by["sl"]["clean_acc"] == evals["sl"]["clean_acc"]
    # rerun: nothing is retrained or re-evaluated
    stamps = {p: p.stat().st_mtime_ns for v in by for p in (root / "images" / v / "checkpoints" / "last.pt",
                                                          root / "images" / v / "eval" / "eval.json")}
    S.run_study(S.load_study_config(path))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert any("kept" in n for n in json.loads((root / "study.json").read_text())["notes"])
    # a changed recipe for a finished sub-run is refused instead of silently mixing results
    changed = S.load_study_config(path)
    changed.tracks[0].overrides.append("optim.lr=0.01")
    with pytest.raises(ValueError, match="different config"):
        S.run_study(changed)
