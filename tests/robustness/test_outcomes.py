"""Per-sample outcome files: keys read back into their fields, the file round-trips, two evaluations pair
sample by sample on their common dataset indices, and the recorder refuses gaps."""

from __future__ import annotations

import numpy as np
import pytest

from vidcsl.errors import UsageError
from vidcsl.robustness.outcomes import OutcomeRecorder, Outcomes, iter_keys, outcome_key, paired, parse_key


def test_keys_are_readable_and_parse_back():
    assert outcome_key("standard", "clip", "clean") == "standard/clip/clean"
    k = outcome_key("adv_bn", "video", "pgd", norm="linf", eps=2 / 255)
    assert k == "adv_bn/video/pgd/linf/eps_255=2"
    assert parse_key(k) == {"protocol": "adv_bn", "level": "video", "measure": "pgd", "norm": "linf",
                            "eps_255": 2.0, "eps": pytest.approx(2 / 255)}
    assert parse_key(outcome_key("standard", "image", "pgd", norm="l2", eps=0.125))["eps"] == 0.125
    c = outcome_key("robust_probe", "image", "corruption", corruption="fog", severity=3)
    assert c == "robust_probe/image/corruption/fog/severity=3" and parse_key(c)["severity"] == 3
    with pytest.raises(UsageError):
        parse_key("standard/clip")


def test_recorder_file_round_trip_and_pairing(tmp_path):
    rec = OutcomeRecorder()
    rec.add_samples([7, 3], [1, 0])
    rec.add("standard/image/clean", np.array([True, False]), 0)
    rec.add("standard/image/corruption/fog/severity=1", [True], 0)  # a measure on the first samples only
    rec.add_samples([9], [2])
    rec.add("standard/image/clean", np.array([True]), 2)
    with pytest.raises(UsageError, match="contiguous"):
        rec.add("standard/image/corruption/fog/severity=1", [False], 2)  # sample 1 was skipped
    a = rec.result({"split": "test"})
    path = a.save(tmp_path / "outcomes.npz")
    b = Outcomes.load(path)
    assert b.index.tolist() == [7, 3, 9] and b.label.tolist() == [1, 0, 2] and b.meta["split"] == "test"
    assert b.accuracy("standard/image/clean") == pytest.approx(2 / 3)
    assert b.samples("standard/image/corruption/fog/severity=1")[0].tolist() == [7]
    assert list(iter_keys(b, measure="corruption")) == ["standard/image/corruption/fog/severity=1"]
    other = Outcomes([9, 7, 5], [2, 1, 0], {"standard/image/clean": np.array([False, False, True])})
    idx, ok_a, ok_b = paired(b, other, "standard/image/clean")
    assert idx.tolist() == [7, 9] and ok_a.tolist() == [True, True] and ok_b.tolist() == [False, False]
    with pytest.raises(UsageError, match="bool"):
        Outcomes([1], [0], {"x/y/clean": np.array([1])})
    with pytest.raises(UsageError, match="no outcome"):
        b["standard/image/pgd/linf/eps_255=8"]
