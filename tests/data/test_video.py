"""Readers and the clip dataset on PyAV-made videos whose frames encode their own index."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vidcsl.data.augment import clip_eval_transform, clip_train_transform
from vidcsl.data.video import (
    BadVideoWarning,
    CollatedBatch,
    PyAVReader,
    VideoClipDataset,
    VideoReadError,
    collate_skip_bad,
    open_video,
)

GOOD = ["h264_gop12", "h264_gop250", "h264_gop1", "mpeg4_gop8", "h264_bframes_avi", "hevc_bframes", "width48",
        "fps50"]


def index_sets(num_frames: int, seed: int = 0) -> list[list[int]]:
    """Index requests that stress seeking: unsorted, repeats, both ends, a strided clip, a lone late frame."""
    rng = np.random.default_rng(seed)
    return [list(range(num_frames)), [num_frames - 1], [num_frames - 1, 0, 5, 5, 1],
            list(range(3, num_frames, 7)), rng.integers(0, num_frames, 9).tolist()]


@pytest.mark.parametrize("name", GOOD)
def test_both_backends_return_the_requested_frames_identically(videos, frame_index, name):
    with open_video(videos[name], "decord") as dec, open_video(videos[name], "pyav") as pav:
        assert dec.num_frames == pav.num_frames
        assert dec.fps == pytest.approx(pav.fps)
        for idx in index_sets(dec.num_frames):
            a, b = dec.get_frames(idx), pav.get_frames(idx)
            assert a.dtype == torch.uint8 and a.shape == (len(idx), *a.shape[1:]) and a.shape[-1] == 3
            assert frame_index(a) == idx
            assert torch.equal(a, b), f"{name}: backends differ by {(a.int() - b.int()).abs().max()}"


def test_reported_frame_counts_and_rates(videos, count_keyframes):
    expect = {"h264_gop12": (40, 25), "h264_gop250": (60, 25), "fps50": (60, 50), "three": (3, 25)}
    for name, (n, fps) in expect.items():
        for backend in ("decord", "pyav"):
            with open_video(videos[name], backend) as r:
                assert (r.num_frames, r.fps) == (n, pytest.approx(fps)), (name, backend)
    assert count_keyframes(videos["h264_gop250"]) == 1 and count_keyframes(videos["mpeg4_gop8"]) >= 4


class CountingContainer:
    """Wraps a PyAV container to count decoded frames and seeks."""

    def __init__(self, container):
        self.inner, self.decoded, self.seeks = container, 0, 0

    def seek(self, *args, **kwargs):
        self.seeks += 1
        return self.inner.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self.inner.decode(*args, **kwargs):
            self.decoded += 1
            yield frame

    def close(self):
        self.inner.close()


def test_pyav_seeks_to_the_keyframe_instead_of_decoding_from_the_start(videos, frame_index):
    with PyAVReader(str(videos["h264_gop1"])) as r:  # every frame a keyframe
        r._container = counting = CountingContainer(r._container)
        assert frame_index(r.get_frames([35, 36])) == [35, 36]
        assert counting.decoded <= 4  # a decode-from-start reader needs 37
    with PyAVReader(str(videos["h264_gop12"])) as r:  # keyframes at 0, 12, 24, 36
        r._container = counting = CountingContainer(r._container)
        assert frame_index(r.get_frames([2, 30])) == [2, 30]
        assert counting.seeks == 2 and counting.decoded <= 3 + 7 + 4  # two short runs, not 31 frames


def test_decord_reads_only_files_it_seeks_correctly_in(videos, frame_index):
    import decord

    for name in ["h264_gop12", "h264_gop250", "fps50"]:
        with open_video(videos[name], "decord") as r:
            assert r.delegated is None, name
    for name in ["mpeg4_gop8", "h264_bframes_avi", "hevc_bframes"]:
        with open_video(videos[name], "decord") as r:
            assert r.delegated, name
    # why: raw decord, asked for single frames after a full read, returns wrong ones for B-frame AVI
    raw = decord.VideoReader(str(videos["mpeg4_gop8"]), ctx=decord.cpu(0), num_threads=1)
    raw.get_batch(list(range(len(raw))))
    got = [frame_index(torch.from_numpy(raw.get_batch([i]).asnumpy()))[0] for i in range(8, 40, 4)]
    assert got != list(range(8, 40, 4))


def test_pyav_numbers_frames_by_output_order_when_the_container_has_no_display_times(videos):
    with PyAVReader(str(videos["h264_bframes_avi"])) as r:
        assert r.sequential
    with PyAVReader(str(videos["mpeg4_gop8"])) as r:
        assert not r.sequential


def test_decord_width_bug_falls_back_to_pyav(videos, frame_index):
    with open_video(videos["width48"], "decord") as r:
        frames = r.get_frames([0, 29, 7])
        assert frames.shape == (3, 32, 48, 3) and frame_index(frames) == [0, 29, 7]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("name, reason", [
    ("missing", "not found"), ("zero", "empty file"), ("junk", "cannot open"), ("truncated_mp4", "cannot open"),
    ("truncated_faststart", "truncated|cannot open|decode"), ("truncated_avi", "truncated"),
])
def test_bad_files_raise_a_read_error_naming_the_file(bad_videos, backend, name, reason):
    path = str(bad_videos[name])
    with pytest.raises(VideoReadError, match=reason) as info:
        with open_video(path, backend) as r:
            r.get_frames(range(r.num_frames))
    assert path in str(info.value)


def test_out_of_range_indices_and_unknown_backend(videos):
    with open_video(videos["three"], "pyav") as r, pytest.raises(IndexError, match="outside 0..2"):
        r.get_frames([1, 3])
    with pytest.raises(ValueError, match="backend"):
        open_video(videos["three"], "opencv")


# -- dataset -----------------------------------------------------------------------------------------------
def clip_index(x: torch.Tensor, frame_index) -> list[int]:
    """Frame indices encoded in a float (C, T, H, W) clip from the default transform."""
    return frame_index(x.mul(255).round().to(torch.uint8).permute(1, 2, 3, 0))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_random_clip_has_t_frames_at_the_stride(videos, frame_index, backend):
    ds = VideoClipDataset([(videos["h264_gop12"], 3)] * 6, num_frames=8, stride=3, backend=backend, seed=1)
    starts = set()
    for i in range(len(ds)):
        x, y = ds[i]
        assert y == 3 and x.shape == (3, 8, 48, 64) and x.dtype == torch.float32
        idx = clip_index(x, frame_index)
        assert np.diff(idx).tolist() == [3] * 7 and 0 <= idx[0] <= 40 - 22
        starts.add(idx[0])
    assert len(starts) > 1  # items draw different starts
    x, _ = ds[0]
    assert torch.equal(x, ds[0][0])  # same (seed, epoch, index) -> same clip
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], VideoClipDataset(ds.samples, num_frames=8, stride=3, seed=1)[i][0])
               for i in range(len(ds)))


def test_target_fps_normalises_the_stride(videos, frame_index):
    ds = VideoClipDataset([(videos["fps50"], 0)], num_frames=5, stride=2, target_fps=25, sampler="uniform")
    idx = clip_index(ds[0][0], frame_index)  # 50 fps source: stride 2 at 25 fps = 4 source frames
    assert np.diff(idx).tolist() == [4] * 4 and idx[0] == (60 - 17) // 2


def test_uniform_k_clips_and_three_crops(videos, frame_index):
    ds = VideoClipDataset([(videos["h264_gop250"], 1)], num_frames=4, stride=2, sampler="uniform", num_clips=3)
    x, y = ds[0]
    assert x.shape == (3, 3, 4, 48, 64) and y == 1
    assert [clip_index(c, frame_index)[0] for c in x] == [0, 27, 53]  # last start 60 - 7 = 53
    ds.transform = clip_eval_transform(32, crops=3)
    assert ds[0][0].shape == (9, 3, 4, 32, 32)


def test_two_clip_mode_gap_and_independent_augmentation(videos, frame_index):
    ds = VideoClipDataset([(videos["h264_gop250"], 0)] * 8, num_frames=4, stride=2, sampler="two_clip",
                          max_gap_s=0.2)  # 25 fps: at most 5 frames apart
    for i in range(len(ds)):
        (x1, x2), _ = ds[i]
        assert abs(clip_index(x1, frame_index)[0] - clip_index(x2, frame_index)[0]) <= 5
    same = VideoClipDataset([(videos["h264_gop12"], 0)], num_frames=4, stride=2, sampler="two_clip",
                            same_time=True, transform=clip_train_transform(32))
    (a, b), _ = same[0]
    assert a.shape == b.shape == (3, 4, 32, 32) and not torch.equal(a, b)  # two draws of the augmentation


def test_bad_files_return_none_warn_once_and_are_recorded(videos, bad_videos):
    samples = [(videos["three"], 0), (bad_videos["zero"], 1), (bad_videos["missing"], 1)]
    ds = VideoClipDataset(samples, num_frames=4, stride=2, backend="pyav")
    with pytest.warns(BadVideoWarning) as record:
        assert [ds[i] for i in range(3)] == [None, None, None]
        assert ds[1] is None
    assert len(record) == 3  # once per path, not per access
    assert "fewer than the 7" in ds.bad[str(videos["three"])]
    assert ds.bad[str(bad_videos["zero"])] == "empty file (0 bytes)"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_survives_a_mix_of_good_and_bad_files(videos, bad_videos, num_workers):
    good = [(videos[n], i) for i, n in enumerate(["h264_gop12", "mpeg4_gop8", "fps50", "width48"])]
    bad = [(bad_videos[n], 9) for n in ["zero", "junk", "truncated_mp4", "truncated_avi", "missing"]]
    bad.append((videos["three"], 9))  # shorter than one clip
    samples = [good[0], *bad[:3], good[1], good[2], *bad[3:], good[3]]
    ds = VideoClipDataset(samples, num_frames=4, stride=2, transform=clip_eval_transform(24))
    loader = DataLoader(ds, batch_size=3, num_workers=num_workers, collate_fn=collate_skip_bad)
    labels, dropped, skipped_batches = [], 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadVideoWarning)
        for batch in loader:
            if batch is None:
                skipped_batches += 1
                continue
            x, y = batch
            assert x.shape[1:] == (3, 4, 24, 24)
            labels += y.tolist()
            dropped += batch.dropped
    assert sorted(labels) == [0, 1, 2, 3]
    assert dropped + 3 * skipped_batches == len(bad)
    if num_workers == 0:
        assert set(ds.bad) == {str(p) for p, _ in bad}


def test_reader_cache_gives_the_same_clips_and_stays_bounded(videos):
    samples = [(videos[n], 0) for n in ["h264_gop12", "mpeg4_gop8", "h264_gop250"]] * 2
    plain = VideoClipDataset(samples, num_frames=4, stride=2)
    cached = VideoClipDataset(samples, num_frames=4, stride=2, max_open_readers=2)
    for i in range(len(samples)):
        assert torch.equal(plain[i][0], cached[i][0])
        assert len(cached._readers) <= 2
    assert len(pickle.loads(pickle.dumps(cached))._readers) == 0  # open readers never travel to workers
    cached.close()
    assert not cached._readers


def test_workers_kept_across_epochs_draw_each_epochs_clips(videos):
    """persistent_workers: set_epoch in the main process reaches workers started in an earlier epoch."""
    samples = [(videos[n], 0) for n in ["h264_gop12", "mpeg4_gop8", "h264_gop250"]] * 2
    ds = VideoClipDataset(samples, num_frames=4, stride=2, transform=clip_train_transform(24), seed=5)
    loader = DataLoader(ds, batch_size=3, num_workers=1, persistent_workers=True, collate_fn=collate_skip_bad)
    epochs = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got = torch.cat([x for x, _ in loader])
        fresh = VideoClipDataset(samples, num_frames=4, stride=2, transform=clip_train_transform(24), seed=5)
        fresh.set_epoch(epoch)
        assert torch.equal(got, torch.stack([fresh[i][0] for i in range(len(samples))])), f"epoch {epoch}"
        epochs.append(got)
    assert not torch.equal(*epochs)


def test_embedded_clips_open_each_file_once_per_process(monkeypatch):
    """The embedded clips are tiny: their readers stay open, so epochs after the first do not reopen files."""
    import vidcsl.data.video as video
    from vidcsl.config import load_config
    from vidcsl.data.factory import build_datasets

    data = build_datasets(load_config("configs/video_simclr.yaml").data, "contrastive")
    opened = []
    real_open = video.open_video
    monkeypatch.setattr(video, "open_video", lambda path, backend: opened.append(path) or real_open(path, backend))
    for ds in (data.train, data.val):
        first = ds[3][0]
        ds.set_epoch(1)
        ds[3], ds[4]
        ds.set_epoch(0)
        assert torch.equal(torch.stack(first) if isinstance(first, tuple) else first,
                           torch.stack(ds[3][0]) if isinstance(first, tuple) else ds[3][0])
        ds.close()
    assert len(opened) == 4  # items 3 and 4 of each split, once each


def test_collate_skip_bad():
    assert collate_skip_bad([None, None]) is None
    batch = collate_skip_bad([(torch.ones(2), 1), None, (torch.zeros(2), 0)])
    assert isinstance(batch, CollatedBatch) and batch.dropped == 1
    x, y = batch
    assert x.shape == (2, 2) and y.tolist() == [1, 0]
    assert copy.copy(batch).dropped == 1  # pin_memory copies the list; the count must survive
    two_view = collate_skip_bad([((torch.ones(2), torch.zeros(2)), 4)])
    (x1, x2), y = two_view
    assert x1.shape == x2.shape == (1, 2) and two_view.dropped == 0


def test_dataset_argument_checks(videos):
    with pytest.raises(ValueError, match="sampler"):
        VideoClipDataset([], sampler="dense")
    with pytest.raises(ValueError, match="backend"):
        VideoClipDataset([], backend="cv2")
    with pytest.raises(ValueError, match="num_frames"):
        VideoClipDataset([], num_frames=0)


def test_data_check_command_reports_bad_files_and_exits_1(tmp_path, videos, bad_videos, capsys):
    from vidcsl.cli import main

    for name, src in [("good.mp4", videos["h264_gop12"]), ("three.mp4", videos["three"]),
                      ("zero.mp4", bad_videos["zero"])]:
        (tmp_path / name).write_bytes(src.read_bytes())
    (tmp_path / "train.txt").write_text("good.mp4 0\nthree.mp4 1\nzero.mp4 1\n")
    assert main(["data", "check", str(tmp_path), "--layout", "list", "--num-frames", "4", "--stride", "2"]) == 1
    out = capsys.readouterr().out
    assert "3 videos, 2 classes, 1 readable, 2 bad" in out
    assert "three.mp4 | short: video has 3 frames" in out and "zero.mp4  | empty file (0 bytes)" in out
    assert "64x48 (1)" in out and "fps | 25.00" in out
    (tmp_path / "train.txt").write_text("good.mp4 0\n")
    assert main(["data", "check", str(tmp_path), "--layout", "list", "--backend", "decord"]) == 0
