"""Device-side views: the centre crop is exact; random crops, flips and colour jitter do what they say."""

import pytest
import torch

from clip_lab.data.augment import augment, center_crop, color_jitter


def ramp(b=4, s=40):
    """Images whose red channel is the x coordinate and green the y coordinate (NHWC uint8)."""
    x = torch.arange(s, dtype=torch.uint8)
    img = torch.zeros(b, s, s, 3, dtype=torch.uint8)
    img[..., 0] = x[None, None, :] * 6
    img[..., 1] = x[None, :, None] * 6
    img[..., 2] = torch.arange(b, dtype=torch.uint8)[:, None, None]
    return img


def test_center_crop_is_the_central_window_in_nchw():
    img = ramp()
    out = center_crop(img, 32)
    assert out.shape == (4, 3, 32, 32) and out.stride(1) == 1 and out.data_ptr() > img.data_ptr()  # a view
    assert torch.equal(out, img[:, 4:36, 4:36].permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="larger than the stored images"):
        center_crop(img, 41)


def test_no_augmentation_is_the_evaluation_view():
    img = ramp()
    assert torch.equal(augment(img, 32), center_crop(img, 32).float())


def test_flip_alone_mirrors_the_centre_crop():
    img = ramp()
    out = augment(img, 32, flip=1.0)
    assert torch.allclose(out, center_crop(img, 32).float().flip(-1), atol=1e-3)


def test_random_resized_crops_stay_inside_and_vary():
    g = torch.Generator().manual_seed(0)
    img = ramp(b=64)
    out = augment(img, 24, crop_scale=0.3, generator=g)
    assert out.shape == (64, 3, 24, 24) and out.min() >= 0 and out.max() <= 255
    assert torch.allclose(out[:, 2], img[..., 2].float()[:, :24, :24], atol=1e-4)  # each image keeps its own constant
    width = (out[:, 0, :, -1] - out[:, 0, :, 0]).mean(dim=1) / (6 * 39)  # covered fraction of the x range
    height = (out[:, 1, -1, :] - out[:, 1, 0, :]).mean(dim=1) / (6 * 39)
    area = width * height
    assert area.min() > 0.3 * 0.8 and area.max() <= 1.0 + 1e-4  # areas in [crop_scale, 1] (sampling grid: ~5%)
    assert area.std() > 0.1 and (width / height).max() <= 4 / 3 * 1.1 and (width / height).min() >= 3 / 4 / 1.1
    again = augment(img, 24, crop_scale=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: reproducible


def test_flip_probability_is_respected():
    g = torch.Generator().manual_seed(1)
    out = augment(ramp(b=2000, s=8), 8, flip=0.25, generator=g)
    flipped = (out[:, 0, 0, 0] > out[:, 0, 0, -1]).float().mean()
    assert abs(flipped.item() - 0.25) < 0.03


def test_color_jitter_is_torchvisions_three_adjustments_where_nothing_saturates():
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g) * 120 + 60
    factors = [torch.rand(6, generator=g) * 0.4 + 0.8 for _ in range(3)]
    expected = torch.stack(
        [
            TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img / 255, b), c), s) * 255
            for img, b, c, s in zip(x, *(f.tolist() for f in factors))
        ]
    )
    assert torch.allclose(color_jitter(x, *factors), expected, atol=1e-3)


def test_color_jitter_factors():
    x = torch.rand(3, 3, 8, 8) * 200 + 20
    one = torch.ones(3)
    assert torch.allclose(color_jitter(x, one, one, one), x, atol=1e-4)
    assert torch.allclose(color_jitter(x, one * 0.5, one, one), x * 0.5, atol=1e-4)
    gray = color_jitter(x, one, one, torch.zeros(3))
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-3) and torch.allclose(gray[:, 1], gray[:, 2], atol=1e-3)
    flat = color_jitter(x, one, torch.zeros(3), one)
    assert flat.flatten(1).std(dim=1).max() < 1e-3  # contrast 0: every pixel at the image's mean gray
    out = augment(ramp(), 32, jitter=0.4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32) and out.min() >= 0 and out.max() <= 255


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs exist only with a GPU")
def test_augmentation_never_waits_for_the_gpu():
    img = ramp(b=8).cuda()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing call raises
    try:
        out = augment(img, 32, crop_scale=0.3, flip=0.5, jitter=0.4)
        center_crop(img, 32).float()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (8, 3, 32, 32)
