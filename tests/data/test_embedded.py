"""The embedded default data: deterministic, cached, and carrying the label where the docstrings say."""

from __future__ import annotations

from pathlib import Path

import decord
import numpy as np
import pytest
from sklearn.datasets import load_digits

from vidcsl.data import embedded
from vidcsl.data.embedded import embedded_digits, embedded_video

SMALL = dict(per_class=(2, 1, 1), frames=12)


def test_digits_deterministic_complete_and_balanced(tmp_path):
    a = embedded_digits(tmp_path / "a")
    b = embedded_digits(tmp_path / "b")
    assert [len(a[s][1]) for s in ("train", "val", "test")] == [1200, 200, 397]
    for s in a:
        x, y = a[s]
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3) and y.dtype == np.int64
        np.testing.assert_array_equal(x, b[s][0])
        np.testing.assert_array_equal(y, b[s][1])
    # the splits partition sklearn's 1,797 scans: same label multiset
    all_labels = np.concatenate([a[s][1] for s in a])
    np.testing.assert_array_equal(np.bincount(all_labels), np.bincount(load_digits().target))
    counts = np.bincount(a["train"][1], minlength=10)
    assert counts.min() > 0.7 * 120 and counts.max() < 1.3 * 120
    # colour is a nuisance from a small palette: never unique per sample (a contrastive shortcut),
    # and mean colour hardly depends on the class
    x, y = a["train"]
    papers = {tuple(img.reshape(-1, 3).min(0)) for img in x}  # the paper shade: where there is no ink
    assert 1 < len(papers) <= 4
    class_means = np.stack([x[y == c].reshape(-1, 3).mean(0) for c in range(10)])
    assert np.ptp(class_means, axis=0).max() < 25


def test_digits_keep_the_scan(tmp_path):
    """Each image's luminance pattern is its upsampled 8x8 scan (real data, not noise)."""
    x, y = embedded_digits(tmp_path)["val"]
    scans = load_digits().images / 16.0
    flat = scans.reshape(len(scans), -1)
    for i in range(5):
        lum = x[i].astype(float).mean(-1)
        small = lum.reshape(8, 4, 8, 4).mean((1, 3)).ravel()  # back to 8x8
        corr = [np.corrcoef(small, f)[0, 1] if f.std() > 0 else -1 for f in flat]
        best = int(np.argmax(corr))
        assert corr[best] > 0.9 and load_digits().target[best] == y[i]


def test_digits_cache_reused_and_env(tmp_path, monkeypatch):
    first = embedded_digits(tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def boom(seed):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(embedded, "_build_digits", boom)
    again = embedded_digits(tmp_path)
    np.testing.assert_array_equal(first["test"][0], again["test"][0])
    monkeypatch.undo()
    monkeypatch.setenv("VIDCSL_DATA", str(tmp_path / "env"))
    embedded_digits()
    assert len(list((tmp_path / "env").glob("*.npz"))) == 1
    # a corrupt cache is rebuilt, not trusted
    cache = next(tmp_path.glob("*.npz"))
    cache.write_bytes(b"garbage")
    np.testing.assert_array_equal(embedded_digits(tmp_path)["test"][1], first["test"][1])


def _read_list(path):
    rows = [line.split() for line in open(path).read().splitlines() if line.strip()]
    return [(p, int(label)) for p, label in rows]


def _decode(path):
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def test_video_files_lists_and_determinism(tmp_path):
    info = embedded_video(tmp_path / "a", **SMALL)
    info_b = embedded_video(tmp_path / "b", **SMALL)
    assert len(info["classes"]) == 10
    for split, n in zip(("train", "val", "test"), SMALL["per_class"]):
        rows = _read_list(info[split])
        assert len(rows) == 10 * n
        assert sorted({label for _, label in rows}) == list(range(10))
        for rel, label in rows:
            assert info["classes"][label] in rel
    from vidcsl.data.layouts import read_split  # the project's own reader of the "list" layout

    samples, names = read_split("list", info["root"], split="val", list_file=info["val"])
    assert names == info["classes"] and [y for _, y in samples] == list(range(10))
    assert all(Path(p).is_file() for p, _ in samples)
    rel, _ = _read_list(info["test"])[7]
    frames = _decode(f"{info['root']}/{rel}")
    assert frames.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(frames, _decode(f"{info_b['root']}/{rel}"))
    # different splits hold different clips
    assert not np.array_equal(_decode(f"{info['root']}/{_read_list(info['train'])[0][0]}"),
                              _decode(f"{info['root']}/{_read_list(info['val'])[0][0]}"))


def test_video_cache_and_incomplete_regeneration(tmp_path, monkeypatch):
    info = embedded_video(tmp_path, **SMALL)
    monkeypatch.setattr(embedded, "_generate_video", lambda *a: (_ for _ in ()).throw(AssertionError("regen")))
    assert embedded_video(tmp_path, **SMALL) == info
    monkeypatch.undo()
    root = Path(info["root"])
    (root / "COMPLETE").unlink()
    (root / "train.txt").write_text("half written")
    embedded_video(tmp_path, **SMALL)
    assert len(_read_list(info["train"])) == 20 and (root / "COMPLETE").is_file()


def test_video_bad_options(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        embedded_video(tmp_path, num_classes=11)
    with pytest.raises(ValueError, match="size"):
        embedded_video(tmp_path, size=33)


@pytest.mark.parametrize("label", range(0, 10, 3))
def test_video_motion_follows_class_direction(label, monkeypatch):
    """With a black background the digit's centroid moves along angle 2*pi*label/10."""
    monkeypatch.setattr(embedded, "_background", lambda rng, size: np.zeros((size, size, 3)))
    scan = load_digits().images[label] / 16.0
    clip = embedded._render_clip(scan.astype(np.float32), label, 10, np.random.default_rng(0),
                                 size=32, frames=16, sprite=16).astype(float).mean(-1)

    def centroid(frame):
        w = np.where(frame > 60, frame, 0)
        ys, xs = np.mgrid[:32, :32]
        return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()

    move = centroid(clip[-1]) - centroid(clip[0])
    angle = np.arctan2(move[1], move[0])
    diff = np.angle(np.exp(1j * (angle - 2 * np.pi * label / 10)))
    assert np.linalg.norm(move) > 6 and abs(diff) < 0.35
