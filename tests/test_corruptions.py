"""Corruptions: their statistics, shapes, seeding, composition, parsing, and PSNR."""

from __future__ import annotations

import math

import pytest
import torch

from ppl_vae.corruptions import (
    BlockMask,
    Compose,
    GaussianBlur,
    GaussianNoise,
    Identity,
    PixelDropout,
    SaltAndPepper,
    corrupt,
    make_corruption,
    psnr,
    reconstruction_psnr,
)

ALL = [
    GaussianNoise(0.3),
    GaussianNoise(0.3, clip=True),
    PixelDropout(0.5),
    PixelDropout(0.9),
    GaussianBlur(4.0),
    BlockMask(16),
    SaltAndPepper(0.2),
    Compose([PixelDropout(0.5), GaussianBlur(1.0)]),
    Identity(),
]


def _images(n: int = 64, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("c", ALL, ids=repr)
def test_shape_dtype_device_kept_and_input_untouched(c):
    for dtype in (torch.float32, torch.float64):
        x = _images().to(dtype)
        before = x.clone()
        out = c(x, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert torch.equal(x, before)
        assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("c", ALL, ids=repr)
def test_a_fixed_seed_reproduces_the_corruption(c):
    x = _images()
    a = c(x, generator=torch.Generator().manual_seed(7))
    b = c(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(corrupt(x, c, seed=3), corrupt(x, c, seed=3))


OWN_SEEDED = [
    lambda s: PixelDropout(0.5, seed=s),
    lambda s: GaussianNoise(0.1, seed=s),
    lambda s: BlockMask(8, seed=s),
    lambda s: SaltAndPepper(0.1, seed=s),
    lambda s: make_corruption("dropout:0.5+noise:0.1", seed=s),
]


@pytest.mark.parametrize("make", OWN_SEEDED)
def test_own_seed_makes_calls_without_generator_reproducible(make):
    """fit() calls corruption(x) with no generator: the object's own seed must fix the sequence."""
    x = _images(8)
    c1, c2 = make(0), make(0)
    first, second = c1(x), c1(x)
    assert not torch.equal(first, second)  # the generator advances between batches
    assert torch.equal(first, c2(x)) and torch.equal(second, c2(x))
    assert not torch.equal(first, make(1)(x))
    c1.reset()
    assert torch.equal(c1(x), first)
    # corrupt() ignores the object's state: a test set gets the same x̃ every time
    assert torch.equal(corrupt(x, c1, seed=5), corrupt(x, make(0), seed=5))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_dropout_fraction_and_values(p):
    x = _images(200) * 0.9 + 0.1  # no pixel is 0 before corruption
    out = PixelDropout(p)(x, generator=torch.Generator().manual_seed(0))
    dropped = out == 0
    n = dropped.numel()
    frac = dropped.float().mean().item()
    assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12
    assert torch.equal(out[~dropped], x[~dropped])  # survivors are not rescaled


def test_dropout_drops_all_channels_of_a_pixel_together():
    x = torch.ones(50, 3, 10, 10)
    out = PixelDropout(0.5)(x, generator=torch.Generator().manual_seed(0))
    per_pixel = (out == 0).sum(1)  # (N, H, W): 0 or 3
    assert set(per_pixel.unique().tolist()) == {0, 3}


@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0])
def test_noise_is_zero_mean_with_variance_sigma_squared(sigma):
    x = _images(200)
    e = GaussianNoise(sigma)(x, generator=torch.Generator().manual_seed(0)) - x
    n = e.numel()
    assert abs(e.mean().item()) < 5 * sigma / math.sqrt(n)
    # the sample variance of n Gaussians has relative standard deviation sqrt(2 / n)
    assert e.var().item() / sigma**2 == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    clipped = GaussianNoise(sigma, clip=True)(x, generator=torch.Generator().manual_seed(0))
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert torch.equal(GaussianNoise(0.0)(x), x)


@pytest.mark.parametrize(
    "size, shape", [(16, (1, 28, 28)), ((5, 9), (2, 12, 20)), (28, (1, 28, 28))]
)
def test_block_mask_size_and_position_range(size, shape):
    bh, bw = (size, size) if isinstance(size, int) else size
    h, w = shape[1:]
    x = torch.ones(2000, *shape)
    out = BlockMask(size)(x, generator=torch.Generator().manual_seed(0))
    masked = out == 0
    assert torch.equal(masked[:, :1].expand_as(masked), masked)  # all channels together
    m = masked[:, 0]  # (N, H, W)
    assert (m.flatten(1).sum(1) == bh * bw).all()  # exactly one bh × bw block per image
    rows, cols = m.any(2), m.any(1)  # (N, H), (N, W): which rows / columns it touches
    assert (rows.sum(1) == bh).all() and (cols.sum(1) == bw).all()  # one contiguous rectangle
    top = rows.float().argmax(1)
    left = cols.float().argmax(1)
    # every top-left corner in [0, H − bh] × [0, W − bw] occurs, and nothing outside
    assert set(top.tolist()) == set(range(h - bh + 1))
    assert set(left.tolist()) == set(range(w - bw + 1))


def test_block_mask_single_image_and_extra_leading_dims():
    x = torch.ones(1, 12, 12)
    assert (BlockMask(4)(x) == 0).sum() == 16
    y = torch.ones(3, 5, 1, 12, 12)
    assert ((BlockMask(4)(y) == 0).flatten(2).sum(2) == 16).all()


def test_block_larger_than_image_is_an_error():
    with pytest.raises(ValueError, match="larger than"):
        BlockMask(16)(torch.ones(2, 1, 10, 28))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 9, 16)])
def test_blur_leaves_a_constant_image_unchanged(sigma, shape):
    for value in (0.0, 0.37, 1.0):
        x = torch.full((4, *shape), value)
        # exact up to float32 rounding of the normalised kernel's sum
        torch.testing.assert_close(GaussianBlur(sigma)(x), x, atol=1e-5, rtol=0)


def test_blur_smooths_and_is_deterministic():
    x = _images(16)
    out = GaussianBlur(4.0)(x)
    assert out.var() < 0.1 * x.var()
    assert torch.equal(out, GaussianBlur(4.0)(x))
    assert torch.equal(GaussianBlur(0.0)(x), x)
    assert GaussianBlur(4.0).kernel_for(28, 28) == (25, 25)  # 2·ceil(3σ) + 1
    assert GaussianBlur(20.0).kernel_for(28, 10) == (9, 27)  # (x, y), cut to odd sizes that fit
    # a point spreads symmetrically
    delta = torch.zeros(1, 1, 15, 15)
    delta[..., 7, 7] = 1
    b = GaussianBlur(1.5)(delta)[0, 0]
    torch.testing.assert_close(b, b.flip(0))
    torch.testing.assert_close(b, b.T)


@pytest.mark.parametrize("p, salt", [(0.2, 0.5), (0.5, 0.0), (0.1, 1.0)])
def test_salt_and_pepper_fraction_and_values(p, salt):
    x = torch.full((200, 1, 28, 28), 0.5)
    out = SaltAndPepper(p, salt=salt)(x, generator=torch.Generator().manual_seed(0))
    n = x.numel()
    s, pep = (out == 1).float().mean().item(), (out == 0).float().mean().item()
    assert s + pep == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n))
    assert s == pytest.approx(p * salt, abs=5 * math.sqrt(p * (1 - p) / n) + 1e-12)
    assert torch.equal(out[(out != 0) & (out != 1)], x[(out != 0) & (out != 1)])


def test_compose_applies_in_order_and_shares_the_seed():
    x = _images(8)
    c = make_corruption("dropout:0.5+blur:2", seed=0)
    assert isinstance(c, Compose)
    assert [type(p) for p in c.corruptions] == [PixelDropout, GaussianBlur]
    g = torch.Generator().manual_seed(0)
    by_hand = GaussianBlur(2.0)(PixelDropout(0.5)(x, generator=g))
    assert torch.equal(c(x), by_hand)  # Compose(seed=0) feeds its generator to each part


@pytest.mark.parametrize(
    "spec, cls, attrs",
    [
        ("dropout:0.9", PixelDropout, {"p": 0.9}),
        ("noise:0.3", GaussianNoise, {"sigma": 0.3, "clip": False}),
        ("gaussian:0.3,clip=1", GaussianNoise, {"sigma": 0.3, "clip": True}),
        ("blur:4", GaussianBlur, {"sigma": 4.0}),
        ("block:16", BlockMask, {"size": (16, 16)}),
        ("block:4,8", BlockMask, {"size": (4, 8)}),
        ("saltpepper:0.1", SaltAndPepper, {"p": 0.1}),
        ("sp:0.1,salt=0.2", SaltAndPepper, {"p": 0.1, "salt": 0.2}),
        (" Dropout : 0.5 ", PixelDropout, {"p": 0.5}),
        ("none", Identity, {}),
    ],
)
def test_make_corruption_parses_specs(spec, cls, attrs):
    c = make_corruption(spec, seed=1)
    assert type(c) is cls
    for k, v in attrs.items():
        assert getattr(c, k) == v


@pytest.mark.parametrize(
    "spec, message",
    [
        ("smudge:1", "unknown corruption 'smudge'"),
        ("dropout:1.5", r"\[0, 1\]"),
        ("dropout:-0.1", r"\[0, 1\]"),
        ("saltpepper:2", r"\[0, 1\]"),
        ("noise:-1", ">= 0"),
        ("blur:-4", ">= 0"),
        ("block:0", "positive"),
        ("block:2.5", "integer"),
        ("dropout:abc", "not a number"),
        ("dropout", "bad parameters"),
        ("dropout:0.5,wibble=3", "bad parameters"),
        ("", "empty"),
    ],
)
def test_make_corruption_errors_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        make_corruption(spec)


def test_non_float_input_is_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        PixelDropout(0.5)(torch.ones(2, 1, 4, 4, dtype=torch.uint8))


def test_psnr_known_values():
    x = torch.zeros(3, 1, 4, 4)
    y = x + 0.1  # MSE 0.01 → 20 dB
    torch.testing.assert_close(psnr(y, x), torch.full((3,), 20.0))
    assert psnr(x, x).isfinite().all()  # capped, not inf

    class Shift:
        def reconstruct(self, x, x_in=None):
            return (x if x_in is None else x_in) + 0.1

    assert reconstruction_psnr(Shift(), x, batch_size=2) == pytest.approx(20.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_data_with_cpu_generator_and_own_generator():
    x = _images(4).cuda()
    for c in (PixelDropout(0.5, seed=0), BlockMask(8, seed=0), GaussianNoise(0.1, seed=0)):
        assert c(x).device == x.device
        a = c(x, generator=torch.Generator().manual_seed(0))
        b = c(x.cpu(), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(a.cpu(), b)
