"""Clip samplers: hand-computed offsets, exact coverage of valid starts, gap bounds, determinism."""

import numpy as np
import pytest
import torch

from vidcsl.data.sampling import (
    ShortVideoError,
    clip_span,
    frame_offsets,
    random_clip,
    two_clips,
    uniform_clips,
)


def test_offsets_without_fps_normalisation_are_the_stride():
    assert frame_offsets(4, 3).tolist() == [0, 3, 6, 9]
    assert clip_span(8, 2) == 15


@pytest.mark.parametrize("fps, target, stride, expected", [
    (50.0, 25.0, 2, [0, 4, 8, 12]),          # twice the rate: stride doubles in source frames
    (30.0, 15.0, 1, [0, 2, 4, 6]),
    (24.0, 30.0, 1, [0, 1, 2, 2, 3]),        # slower source: k*0.8 rounded -> repeats a frame
    (29.97, 30.0, 4, [0, 4, 8, 12]),         # 3.996 per step rounds back to 4
])
def test_offsets_map_target_fps_stride_to_source_frames(fps, target, stride, expected):
    assert frame_offsets(len(expected), stride, fps, target).tolist() == expected


def test_random_clip_reaches_every_valid_start_and_no_other():
    rng = np.random.default_rng(0)
    video, t, s = 20, 4, 3  # span 10 -> starts 0..10
    starts = set()
    for _ in range(400):
        idx = random_clip(video, 25.0, num_frames=t, stride=s, generator=rng)
        assert (np.diff(idx) == s).all()
        starts.add(int(idx[0]))
    assert starts == set(range(11))


def test_random_clip_exact_fit_and_too_short():
    g = torch.Generator().manual_seed(0)
    assert random_clip(15, 25.0, num_frames=8, stride=2, generator=g).tolist() == list(range(0, 15, 2))
    with pytest.raises(ShortVideoError, match="14 frames"):
        random_clip(14, 25.0, num_frames=8, stride=2, generator=g)


def test_random_clip_is_deterministic_per_generator_seed():
    a = random_clip(100, 25.0, num_frames=8, stride=2, generator=torch.Generator().manual_seed(7))
    b = random_clip(100, 25.0, num_frames=8, stride=2, generator=torch.Generator().manual_seed(7))
    assert a.tolist() == b.tolist()


def test_uniform_clips_spacing_is_hand_computed():
    clips = uniform_clips(40, 25.0, num_clips=3, num_frames=8, stride=2)  # span 15, last start 25
    assert clips[:, 0].tolist() == [0, 13, 25]  # 12.5 rounds half up
    assert clips.shape == (3, 8) and clips.max() == 39
    assert uniform_clips(40, 25.0, num_clips=1, num_frames=8, stride=2)[0, 0] == 12  # centre clip


def test_two_clips_respect_the_maximum_gap_and_reach_it():
    rng = np.random.default_rng(1)
    fps, gap_s = 10.0, 0.5  # 5 frames
    gaps = []
    for _ in range(600):
        clips = two_clips(60, fps, num_frames=4, stride=2, generator=rng, max_gap_s=gap_s)
        assert clips.shape == (2, 4) and clips.min() >= 0 and clips.max() < 60
        gaps.append(int(clips[1, 0] - clips[0, 0]))
    assert max(gaps) == 5 and min(gaps) == -5


def test_two_clips_same_time_and_unbounded():
    g = torch.Generator().manual_seed(3)
    same = two_clips(60, 25.0, num_frames=4, stride=2, generator=g, same_time=True)
    assert same[0].tolist() == same[1].tolist()
    gaps = {int(np.diff(two_clips(60, 25.0, num_frames=4, stride=2, generator=g)[:, 0])[0]) for _ in range(300)}
    assert max(gaps) > 30 and min(gaps) < -30  # independent starts span the whole video


def test_bad_arguments_raise_value_errors():
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match="fps is unknown"):
        frame_offsets(4, 2, float("nan"), 25.0)
    with pytest.raises(ValueError, match="stride"):
        frame_offsets(4, 0)
    with pytest.raises(ValueError, match="num_clips"):
        uniform_clips(40, 25.0, num_clips=0, num_frames=4, stride=1)
    with pytest.raises(TypeError, match="generator"):
        random_clip(40, 25.0, num_frames=4, stride=1, generator=42)
    with pytest.raises(ValueError, match="max_gap_s"):
        two_clips(40, 25.0, num_frames=4, stride=1, generator=g, max_gap_s=-1)
