"""Corruptions: registry contract (shape/dtype/range, deterministic, monotone), clip = same draw per frame."""

from __future__ import annotations

import pytest
import torch

from vidcsl.robustness.corruptions import CORRUPTIONS, FAMILIES, IMAGE_CORRUPTIONS, corrupt


def natural_image(b=2, h=32, w=32, seed=0):
    """Smooth gradients + a sinusoid + some texture: blur, noise and compression all have work to do."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(6 * xx + 3 * yy)])[None].repeat(b, 1, 1, 1)
    return (0.8 * img + 0.2 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def moving_clip(b=3, t=16, h=32, w=32):
    img = natural_image(b, h, w)
    return torch.stack([torch.roll(img, shifts=2 * i, dims=-1) for i in range(t)], dim=2)


def sample_for(name):
    return moving_clip() if CORRUPTIONS[name].clips_only else natural_image()


def test_registry_covers_the_families():
    assert set(FAMILIES) == {"noise", "blur", "weather", "digital", "temporal"}
    assert {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"} <= set(FAMILIES["noise"])
    assert {"gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur"} <= set(FAMILIES["blur"])
    assert {"fog", "brightness", "contrast"} <= set(FAMILIES["weather"])
    assert {"jpeg_compression", "pixelate", "saturate"} <= set(FAMILIES["digital"])
    assert set(FAMILIES["temporal"]) == {"frame_drop", "frame_shuffle", "temporal_jitter", "reencode"}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_keeps_shape_dtype_range_and_grows_with_severity(name):
    x = sample_for(name)
    dist = []
    for s in range(1, 6):
        out = corrupt(x, name, s, seed=3)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, corrupt(x, name, s, seed=3)), "not deterministic for a fixed seed"
        dist.append((out - x).abs().mean().item())
    assert dist[0] > 0
    assert all(b > a for a, b in zip(dist, dist[1:])), f"{name} not monotone in severity: {dist}"


RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur", "fog",
          "elastic_transform", "frame_drop", "frame_shuffle", "temporal_jitter"]


@pytest.mark.parametrize("name", RANDOM)
def test_seed_changes_the_draw(name):
    x = sample_for(name)
    assert not torch.equal(corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=1))


@pytest.mark.parametrize("name", IMAGE_CORRUPTIONS)
def test_clip_gets_the_same_draw_on_every_frame(name):
    """A clip of T copies of an image corrupts to T copies of the corrupted image."""
    img = natural_image(b=2, h=16, w=16)
    clip = img.unsqueeze(2).repeat(1, 1, 4, 1, 1)
    out_img = corrupt(img, name, 4, seed=11)
    out_clip = corrupt(clip, name, 4, seed=11)
    for t in range(4):
        torch.testing.assert_close(out_clip[:, :, t], out_img, rtol=0, atol=1e-6)


def test_hand_checked_values():
    x = torch.full((1, 3, 4, 4), 0.5)
    x[:, 0] = 0.25  # r=.25, g=b=.5 -> V=.5, S=.5
    torch.testing.assert_close(corrupt(x, "contrast", 2), (x - x.mean()) * 0.5 + x.mean())
    # brightness: V .5 -> .6 scales every channel by 1.2 (hue, saturation kept)
    torch.testing.assert_close(corrupt(x, "brightness", 2), x * 1.2)
    # saturate sev 2: S .5 -> 1, V kept: the min channel goes to 0
    sat = corrupt(x, "saturate", 2)
    torch.testing.assert_close(sat[:, 0], torch.zeros_like(sat[:, 0]))
    torch.testing.assert_close(sat[:, 1:], x[:, 1:])
    # pixelate sev 1 (2x2 blocks) of a checkerboard is flat grey
    checker = ((torch.arange(4)[:, None] + torch.arange(4)[None]) % 2).float().expand(1, 3, 4, 4)
    torch.testing.assert_close(corrupt(checker, "pixelate", 1), torch.full_like(checker, 0.5))


def test_frame_drop_repeats_the_previous_kept_frame():
    t = 12
    clip = torch.linspace(0, 1, t).view(1, 1, t, 1, 1).expand(2, 3, t, 2, 2).contiguous()
    out = corrupt(clip, "frame_drop", 5, seed=0)
    idx = (out[:, 0, :, 0, 0] * (t - 1)).round()
    assert (idx[:, 0] == 0).all()
    diffs = idx[:, 1:] - idx[:, :-1]
    assert ((diffs == 0) | (idx[:, 1:] == torch.arange(1, t).float())).all()  # repeat or the true frame
    assert (diffs == 0).any()


def test_bad_inputs_raise():
    img = natural_image()
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(img, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(img, "fog", 6)
    with pytest.raises(ValueError, match="temporal"):
        corrupt(img, "frame_drop", 1)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        corrupt(img * 2, "fog", 1)
    with pytest.raises(ValueError, match="float"):
        corrupt((img * 255).to(torch.uint8), "fog", 1)
