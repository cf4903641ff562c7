"""Clip augmentations: one draw per clip (identical frames stay identical), ranges, eval crops."""

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from vidcsl.data.augment import (
    ColorJitter,
    RandomGaussianBlur,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    adjust_brightness_each,
    adjust_contrast_each,
    adjust_hue_each,
    adjust_saturation_each,
    clip_eval_transform,
    clip_train_transform,
    color_jitter_each,
)


def repeated_clip(t=4, h=40, w=56, seed=0) -> torch.Tensor:
    """uint8 (T, H, W, C) clip whose T frames are the same random image."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    return frame.expand(t, h, w, 3).clone()


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_applies_one_draw_to_every_frame(seed):
    out = clip_train_transform(24, strength=1.0, flip_p=0.5, jitter_p=1.0, grayscale_p=0.5, blur_p=0.5)(
        repeated_clip(), generator=torch.Generator().manual_seed(seed))
    assert out.shape == (3, 4, 24, 24) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    for t in range(1, 4):
        assert torch.equal(out[:, t], out[:, 0])  # a per-frame draw would differ here


def test_train_transform_is_random_across_draws_and_reproducible_per_seed():
    tf = clip_train_transform(24)
    clip = repeated_clip()
    a = tf(clip, generator=torch.Generator().manual_seed(1))
    b = tf(clip, generator=torch.Generator().manual_seed(1))
    c = tf(clip, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_resized_crop_boxes_respect_scale_and_ratio():
    rrc = RandomResizedCrop(16, scale=(0.3, 0.6), ratio=(0.5, 2.0))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = rrc.params(100, 120, g)
        assert 0 <= top <= 100 - h and 0 <= left <= 120 - w
        # rounding of h and w moves area and aspect a little beyond the drawn values
        assert 0.3 * 0.95 <= h * w / (100 * 120) <= 0.6 * 1.05
        assert math.log(0.5) - 0.05 <= math.log(w / h) <= math.log(2.0) + 0.05


def test_flip_and_grayscale_with_certain_probability():
    frames = repeated_clip().permute(0, 3, 1, 2)
    flipped = RandomHorizontalFlip(p=1.0)(frames)
    assert torch.equal(flipped, frames.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(frames), frames)
    gray = RandomGrayscale(p=1.0)(frames)
    assert gray.shape == frames.shape and torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    expected = (0.299 * frames[:, 0].float() + 0.587 * frames[:, 1].float() + 0.114 * frames[:, 2].float())
    assert (gray[:, 0].float() - expected).abs().max() < 1.05  # ITU-R 601 luma, truncated to uint8


def test_brightness_jitter_scales_all_frames_by_one_factor():
    frames = torch.randint(20, 120, (5, 3, 16, 16), dtype=torch.uint8)  # distinct frames, no clipping at 255
    out = ColorJitter(brightness=0.5, contrast=0, saturation=0, hue=0, p=1.0)(
        frames.float() / 255, generator=torch.Generator().manual_seed(4))
    ratio = out / (frames.float() / 255)
    assert 0.5 <= ratio.mean() <= 1.5
    assert (ratio - ratio.mean()).abs().max() < 1e-5


def test_blur_smooths_and_keeps_frames_consistent():
    frames = repeated_clip(t=3, h=32, w=32).permute(0, 3, 1, 2)
    out = RandomGaussianBlur(p=1.0, sigma=(1.5, 1.5))(frames)
    assert out.float().std() < 0.7 * frames.float().std()
    assert torch.equal(out[0], out[2])


def test_eval_transform_short_side_resize_and_centre_crop():
    h, w = 30, 60
    ramp = torch.arange(w, dtype=torch.float32).mul(255 / (w - 1)).round().to(torch.uint8)  # brighter rightwards
    clip = ramp.view(1, 1, w, 1).expand(2, h, w, 3).clone()
    out = clip_eval_transform(15)(clip)
    assert out.shape == (3, 2, 15, 15)
    # resized to 15x30, centre crop columns 7..21 of 30: mean ≈ mid-ramp
    assert abs(out.mean().item() - 0.5) < 0.03
    three = clip_eval_transform(15, crops=3)(clip)
    assert three.shape == (3, 3, 2, 15, 15)
    means = three.mean(dim=(1, 2, 3, 4)).tolist()
    assert means[0] < 0.3 < means[1] < 0.7 < means[2]  # left, centre, right


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="crops must be 1 or 3"):
        clip_eval_transform(16, crops=2)
    with pytest.raises(ValueError, match=r"\(T, H, W, C\)"):
        clip_eval_transform(16)(torch.zeros(3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(16, scale=(0.5, 0.2))


# -- per-sample colour ops: what torchvision computes for each sample alone ---------------------------------
EACH_VS_TORCHVISION = [(adjust_brightness_each, F.adjust_brightness, (0.2, 1.8)),
                       (adjust_contrast_each, F.adjust_contrast, (0.2, 1.8)),
                       (adjust_saturation_each, F.adjust_saturation, (0.0, 1.8)),
                       (adjust_hue_each, F.adjust_hue, (-0.5, 0.5))]


@pytest.mark.parametrize("each, reference, bounds", EACH_VS_TORCHVISION, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 15, 17), (4, 3, 8, 12)], ids=["image", "odd", "clip"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_per_sample_colour_ops_equal_torchvision_per_sample(each, reference, bounds, shape, dtype):
    g = torch.Generator().manual_seed(len(shape) * 7 + shape[-1])
    x = torch.randint(0, 256, (6, *shape), generator=g, dtype=torch.uint8)
    if dtype == torch.float32:
        x = x.float() / 255
    factors = [bounds[0] + (bounds[1] - bounds[0]) * float(torch.rand((), generator=g)) for _ in range(6)]
    out = each(x, factors)
    assert out.dtype == x.dtype and out.shape == x.shape
    for i, f in enumerate(factors):
        if dtype == torch.float32 and each is adjust_contrast_each:  # a float mean: summation order may differ
            torch.testing.assert_close(out[i], reference(x[i], f), rtol=0, atol=1e-6)
        else:  # bit-identical, not merely close: the views must not change
            assert torch.equal(out[i], reference(x[i], f)), f"sample {i}, factor {f}"


def test_colour_jitter_each_applies_each_samples_ops_in_its_own_order():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (5, 3, 10, 10), generator=g, dtype=torch.uint8)
    orders = [torch.randperm(4, generator=g).tolist() for _ in range(5)]
    factors = [(1.3, 0.7, None, 0.1), (0.6, None, 1.5, -0.2), (None, 1.2, 0.8, None), (1.0, 1.0, 1.0, 0.0),
               (0.9, 1.4, 0.3, 0.45)]
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    out = color_jitter_each(x, orders, factors)
    for i in range(5):
        expected = x[i]
        for op in orders[i]:
            if factors[i][op] is not None:
                expected = ops[op](expected, factors[i][op])
        assert torch.equal(out[i], expected)
    assert torch.equal(color_jitter_each(x[:0], [], []), x[:0])
