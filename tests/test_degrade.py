"""Degradations and transforms against numpy/cv2 references and hand-computed cases."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from vitlocal.errors import ConfigError
from vitlocal.features.degrade import (
    FREQUENCY_BANDS,
    CropContext,
    Variant,
    apply_variant,
    band_mask,
    band_noise,
    box_blur,
    derive_seed,
    frequency_noise,
    gaussian_noise,
    parse_variant,
    patch_correspondence,
    rotate,
    scale,
    shift_horizontal,
)

RNG = np.random.default_rng(0)


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_box_blur_is_a_k_by_k_mean(k):
    image = _image()
    # Independent reference: reflect-101 padding ("reflect" in numpy), window
    # x - k//2 .. x + k - 1 - k//2 (OpenCV's default anchor for even kernels).
    lo, hi = k // 2, k - 1 - k // 2
    padded = np.pad(image.astype(np.float64), ((lo, hi), (lo, hi), (0, 0)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(0, 1))
    ref = windows.mean(axis=(-2, -1))
    diff = np.abs(box_blur(image, k).astype(np.float64) - ref)
    # OpenCV scales uint8 sums in fixed point: its rounding may be off by < 1 level,
    # while a wrong window (anchor, border, size) is off by several levels.
    assert diff.max() < 1


def test_gaussian_noise_statistics_and_determinism():
    grey = np.full((128, 128, 3), 128, np.uint8)
    noisy = gaussian_noise(grey, 20, rng=7)
    delta = noisy.astype(np.float64) - 128
    assert abs(delta.mean()) < 0.3
    assert abs(delta.std() - 20) < 0.4
    np.testing.assert_array_equal(noisy, gaussian_noise(grey, 20, np.random.default_rng(7)))
    assert not np.array_equal(noisy, gaussian_noise(grey, 20, rng=8))
    bright = gaussian_noise(np.full((32, 32, 3), 250, np.uint8), 40, rng=0)
    assert bright.max() == 255 and bright.dtype == np.uint8


def test_band_mask_radii_are_fractions_of_nyquist():
    mask = band_mask(64, 64, 0.5, 0.55)
    centre = 32  # fftshift puts zero frequency at index n // 2
    assert not mask[centre, centre]
    assert mask[centre, centre + 16]  # rho = 2 * 16 / 64 = 0.5: inner radius included
    assert mask[centre, centre + 17]  # 0.531
    assert not mask[centre, centre + 18]  # 0.5625
    assert mask[centre + 12, centre + 12]  # hypot(0.375, 0.375) = 0.530
    np.testing.assert_array_equal(mask[1:, 1:], mask[1:, 1:][::-1, ::-1])  # point symmetry
    # Non-square: the band spans 8 rows but 16-17 columns of the FFT index.
    wide = band_mask(32, 64, 0.5, 0.55)
    assert wide[16 + 8, 32] and not wide[16 + 9, 32]
    assert wide[16, 32 + 17] and not wide[16, 32 + 18]


@pytest.mark.parametrize("shape", [(32, 48, 3), (31, 45, 3), (64, 64, 1)])
def test_band_noise_is_the_papers_full_spectrum_formula(shape):
    """Re(ifft2(ifftshift(M * fftshift(fft2(N))))) with N drawn from the same generator, even and odd sizes."""
    band = (0.25, 0.3)
    n = np.random.default_rng(5).normal(0.0, 40.0, size=shape)
    mask = band_mask(shape[0], shape[1], *band)[:, :, None]
    expected = np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(n, axes=(0, 1)), axes=(0, 1)) * mask,
                                             axes=(0, 1)), axes=(0, 1)).real
    np.testing.assert_allclose(band_noise(shape, band, rng=np.random.default_rng(5), sigma=40.0), expected,
                               atol=1e-9)


@pytest.mark.parametrize("shape", [(64, 96, 3), (63, 65, 3)])
@pytest.mark.parametrize("band", FREQUENCY_BANDS)
def test_band_noise_energy_is_inside_the_band(shape, band):
    noise = band_noise(shape, band, rng=3)
    assert noise.shape == shape
    spectrum = np.fft.fftshift(np.fft.fft2(noise, axes=(0, 1)), axes=(0, 1))
    energy = np.abs(spectrum) ** 2
    mask = band_mask(shape[0], shape[1], *band)
    assert energy[mask].sum() / energy.sum() > 0.999
    # Parseval: E[var] = sigma^2 * (fraction of frequencies kept).
    expected_std = 40 * np.sqrt(mask.mean())
    assert abs(noise.std() / expected_std - 1) < 0.15


def test_frequency_noise_adds_the_exposed_noise():
    image = _image()
    noisy = frequency_noise(image, FREQUENCY_BANDS[1], rng=5)
    expected = np.clip(np.rint(image + band_noise(image.shape, FREQUENCY_BANDS[1], rng=5)), 0, 255)
    np.testing.assert_array_equal(noisy, expected.astype(np.uint8))


def test_shift_with_context_is_a_slice_of_the_source():
    source = _image(80, 120)
    crop = source[10:42, 20:52]
    shifted, affine = shift_horizontal(crop, 3, CropContext(source, x0=20, y0=10))
    np.testing.assert_array_equal(shifted, source[10:42, 17:49])
    np.testing.assert_array_equal(affine, [[1, 0, 3], [0, 1, 0]])


def test_shift_without_context_reflects_the_border():
    image = _image(16, 20)
    shifted, _ = shift_horizontal(image, 2)
    np.testing.assert_array_equal(shifted[:, 2:], image[:, :-2])
    np.testing.assert_array_equal(shifted[:, 0], image[:, 2])  # reflect-101: x=-2 -> 2
    np.testing.assert_array_equal(shifted[:, 1], image[:, 1])


def test_context_must_contain_the_crop():
    source = _image(40, 40)
    with pytest.raises(ValueError, match="does not contain"):
        rotate(source[0:16, 0:16], 5, CropContext(source, x0=1, y0=0))


def test_rotate_is_counter_clockwise_and_affine_locates_content():
    image = np.zeros((65, 65, 3), np.uint8)
    image[9:12, 54:57] = 255  # blob centred at (x=55, y=10), top right
    rotated, affine = rotate(image, 90)
    x, y = affine @ np.array([55.0, 10.0, 1.0])
    assert (round(x), round(y)) == (10, 9)  # top left: counter-clockwise
    ys, xs = np.nonzero(rotated[:, :, 0] > 128)
    assert (xs.mean(), ys.mean()) == pytest.approx((x, y), abs=0.01)
    np.testing.assert_array_equal(rotate(image, 0)[0], image)
    np.testing.assert_array_equal(scale(image, 1.0)[0], image)


def test_scale_magnifies_about_the_centre():
    image = np.zeros((41, 41, 3), np.uint8)
    image[20, 30] = 200  # 10 px right of the centre (20, 20)
    zoomed, affine = scale(image, 1.5)
    np.testing.assert_allclose(affine @ [30, 20, 1], [35, 20])
    assert zoomed[20, 35, 0] == 200


def test_correspondence_of_a_one_patch_shift():
    _, affine = shift_horizontal(np.zeros((224, 224, 3), np.uint8), 16)
    corr = patch_correspondence(affine, (224, 224), 14).reshape(14, 14)
    r, c = np.meshgrid(np.arange(14), np.arange(14), indexing="ij")
    expected = np.where(c >= 1, r * 14 + c - 1, -1)
    np.testing.assert_array_equal(corr, expected)


def test_small_shifts_keep_every_patch():
    _, affine = shift_horizontal(np.zeros((224, 224, 3), np.uint8), 4)
    np.testing.assert_array_equal(patch_correspondence(affine, (224, 224), 14), np.arange(196))


def test_correspondence_identity_and_quarter_turn():
    image = np.zeros((64, 64, 3), np.uint8)
    np.testing.assert_array_equal(patch_correspondence(rotate(image, 0)[1], (64, 64), 4), np.arange(16))
    np.testing.assert_array_equal(patch_correspondence(scale(image, 1.0)[1], (64, 64), 4), np.arange(16))
    # Counter-clockwise quarter turn: original (r, c) goes to (1 - c, r) on a 2x2 grid, so
    # transformed 0=(0,0) <- (0,1)=1, 1=(0,1) <- (1,1)=3, 2=(1,0) <- (0,0)=0, 3=(1,1) <- (1,0)=2.
    np.testing.assert_array_equal(patch_correspondence(rotate(image, 90)[1], (64, 64), 2), [1, 3, 0, 2])


def test_correspondence_borders_have_none():
    image = np.zeros((224, 224, 3), np.uint8)
    corr = patch_correspondence(scale(image, 0.8)[1], (224, 224), 14).reshape(14, 14)
    # Row 0 centre y = 7.5 is 104 px above the centre; back through 1/0.8: 130 > 112 -> outside.
    assert (corr[0] == -1).all() and (corr[:, 0] == -1).all()
    # Row 1: 88 / 0.8 = 110 px above the centre -> original y = 1.5 -> patch row 0.
    assert corr[1, 7] == 0 * 14 + 7
    assert corr[7, 7] == 7 * 14 + 7
    rotated = patch_correspondence(rotate(image, 10)[1], (224, 224), 14).reshape(14, 14)
    assert rotated[0, 0] == -1 and rotated[7, 7] == 7 * 14 + 7


def test_parse_variant_names():
    assert parse_variant("clean") == Variant("clean", None)
    assert parse_variant("blur-4") == ("blur", 4)
    assert parse_variant("noise-20") == ("noise", 20.0)
    assert parse_variant("freqnoise-2") == ("freqnoise", 2)
    assert parse_variant("rotate--10") == ("rotate", -10.0)
    assert parse_variant("scale-0.9").name == "scale-0.9"
    with pytest.raises(ConfigError, match="unknown image variant 'jpeg-50'.*'blur'.*'shift'"):
        parse_variant("jpeg-50")
    with pytest.raises(ConfigError, match="not a valid int"):
        parse_variant("blur-2.5")
    with pytest.raises(ConfigError, match="takes no level"):
        parse_variant("clean-1")


def test_apply_variant_dispatches():
    image = _image()
    seed = derive_seed(0, "aachen_000000_000019")
    np.testing.assert_array_equal(apply_variant(image, "blur-4", seed)[0], box_blur(image, 4))
    np.testing.assert_array_equal(apply_variant(image, "noise-20", seed)[0], gaussian_noise(image, 20, seed))
    np.testing.assert_array_equal(
        apply_variant(image, "freqnoise-1", seed)[0], frequency_noise(image, FREQUENCY_BANDS[0], seed)
    )
    clean, identity = apply_variant(image, Variant("clean"), seed)
    np.testing.assert_array_equal(clean, image)
    np.testing.assert_array_equal(identity, np.eye(2, 3))
    assert apply_variant(image, "shift-3", seed)[1][0, 2] == 3
    with pytest.raises(ConfigError, match="band 5 out of range 1..4"):
        apply_variant(image, "freqnoise-5", seed)


def test_derive_seed_is_stable_and_order_free():
    assert derive_seed(0, "a") == zlib.crc32(b"0/a")
    assert derive_seed(1, "a") != derive_seed(0, "a") != derive_seed(0, "b")
