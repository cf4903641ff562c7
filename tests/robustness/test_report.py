"""Tables round-trip their numbers; plots write PNG files."""

from __future__ import annotations

import math

import pytest
import torch

from vidcsl.report.plots import (
    pairwise_values,
    plot_accuracy_vs_eps,
    plot_corruption_bars,
    plot_uniformity_histogram,
)
from vidcsl.report.tables import format_value, read_csv, to_markdown, write_csv, write_markdown

ROWS = [
    {"model": "simclr", "eps": 0, "clean": 0.8123456789, "robust": 0.1},
    {"model": "sl|fn", "eps": 8, "clean": 0.9, "robust": float("nan"), "note": "x"},
]


def test_csv_round_trips_numbers_exactly(tmp_path):
    path = write_csv(ROWS, tmp_path / "t.csv")
    back = read_csv(path)
    assert back[0]["clean"] == ROWS[0]["clean"] and back[1]["eps"] == 8
    assert math.isnan(back[1]["robust"]) and back[0]["note"] is None
    assert [list(r) for r in back] == [["model", "eps", "clean", "robust", "note"]] * 2


def test_markdown_uses_one_format(tmp_path):
    text = write_markdown(ROWS, tmp_path / "t.md", digits=3, title="Results").read_text()
    lines = text.splitlines()
    assert lines[0] == "## Results"
    assert lines[2] == "| model | eps | clean | robust | note |"
    assert lines[3] == "|:---|---:|---:|---:|:---|"
    assert lines[4] == "| simclr | 0 | 0.812 | 0.100 |  |"
    assert lines[5] == "| sl\\|fn | 8 | 0.900 | nan | x |"
    cells = [float(c) for c in lines[4].split("|")[3:5]]
    assert cells == pytest.approx([ROWS[0]["clean"], ROWS[0]["robust"]], abs=5e-4)
    assert format_value(torch.tensor(0.25), 2) == "0.25"
    with pytest.raises(ValueError):
        to_markdown([])


def test_plots_write_pngs(tmp_path):
    p1 = plot_accuracy_vs_eps({"sl": ([0, 2 / 255, 8 / 255], [0.9, 0.5, 0.1]),
                               "csl": ([0, 2 / 255, 8 / 255], [0.8, 0.3, 0.0])}, tmp_path / "acc.png")
    z = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    p2 = plot_uniformity_histogram({"a": z, "b": z * 0.1}, tmp_path / "u.png", kind="similarity")
    p3 = plot_corruption_bars({"sl": {"fog": 0.5, "jpeg": 0.7}, "csl": {"fog": 0.4}}, tmp_path / "c.png")
    for p in (p1, p2, p3):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    with pytest.raises(ValueError, match="PNG"):
        plot_corruption_bars({"sl": {"fog": 0.5}}, tmp_path / "c.jpg")


def test_pairwise_values_match_definitions():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    torch.testing.assert_close(pairwise_values(z), torch.tensor([5**0.5, 2.0, 13**0.5]))
    torch.testing.assert_close(pairwise_values(z, "similarity"), torch.tensor([0.0, 1.0, 0.0]))


def test_header_row_tables_print_missing_values_as_n_a(tmp_path):
    from vidcsl.report.plots import plot_histogram
    from vidcsl.report.tables import fmt, markdown_table, write_csv_rows

    assert [fmt(v) for v in (None, float("nan"), float("inf"), 3, 0.5, True, "x")] == \
        ["n/a", "n/a", "n/a", "3", "0.5000", "True", "x"]
    md = markdown_table(["variant", "clean", "robust"], [["sl", 0.91234, None], ["csl", float("nan"), 2]])
    assert md.splitlines()[2:] == ["| sl | 0.9123 | n/a |", "| csl | n/a | 2 |"]
    assert markdown_table(["a", "b"], []).splitlines() == ["| a | b |", "|:---|:---|"]  # header alone
    back = read_csv(write_csv_rows(tmp_path / "r.csv", ["a", "b"], [[0.1234567891, None]]))
    assert back == [{"a": 0.1234567891, "b": None}]
    assert read_csv(write_csv_rows(tmp_path / "e.csv", ["a", "b"], [])) == []
    p = plot_histogram([1, 3, 2], [0, 1, 2, 3], tmp_path / "h.png", xlabel="x")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="edge"):
        plot_histogram([1, 2], [0, 1], tmp_path / "h2.png", xlabel="x")


def test_interval_and_mechanism_plots_take_missing_values(tmp_path):
    from vidcsl.report.plots import plot_interval_panels, plot_mechanism

    curves = {"sl": ([0, 4, 8], [0.9, 0.6, None], [0.85, 0.5, None], [0.95, 0.7, None]),
              "csl": ([0, 4, 8], [0.95, 0.5, 0.1], [None, 0.4, 0.05], [None, 0.6, 0.15])}
    p1 = plot_interval_panels([("image linf", "eps", curves), ("image l2", "eps", {"sl": ([0], [0.9], [0.8], [1.0])})],
                              tmp_path / "acc.png", ylabel="accuracy", ylim=(0, 1), zero_line=True)
    points = {"sl": {"uniformity": -1.5, "uniformity_sd": 0.1, "alignment": 0.5, "alignment_sd": None, "y": 0.6,
                     "low": 0.5, "high": 0.7, "group": "SL"},
              "byol": {"uniformity": None, "alignment": 0.3, "y": 0.4, "low": None, "high": None, "group": "nf"}}
    p2 = plot_mechanism(points, tmp_path / "mech.png")
    for p in (p1, p2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    with pytest.raises(ValueError, match="at least one"):
        plot_interval_panels([], tmp_path / "x.png", ylabel="y")
