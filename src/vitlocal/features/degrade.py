"""Image degradations (Fig. 3) and geometric transforms with patch correspondences (Figs. 6, 7).

Every function takes and returns ``uint8`` RGB ``(H, W, 3)``; random ones take
an explicit ``rng`` (an int seed or a ``numpy.random.Generator``).

Conventions:

- Pixel coordinates are OpenCV's: pixel ``(x, y)`` has its centre at ``(x, y)``,
  the image centre is ``((W - 1) / 2, (H - 1) / 2)``. Geometric transforms
  return the 2x3 affine mapping ORIGINAL -> TRANSFORMED pixel coordinates.
- Frequency-band radii are fractions of the Nyquist frequency (0.5 cycles/px)
  along each axis: radius ``rho = sqrt((2 fy)^2 + (2 fx)^2)`` with ``fx, fy``
  in cycles/px. A band is a circle in cycles/px for any image size (an
  ellipse in FFT index space for non-square images); ``rho = 1`` touches the
  middle of the spectrum's edges.
- Seeds: :func:`derive_seed` makes a per-image seed from ``(global seed,
  image id)`` so results do not depend on processing order. The variant is
  deliberately not part of it: all levels of one kind see the same underlying
  standard-normal draw (common random numbers), so curves over levels differ
  only by the level.
"""

from __future__ import annotations

import functools
import zlib
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from ..errors import ConfigError
from ..tiling import as_size

Rng = int | np.random.Generator

#: [choose] Four narrow rings, high to low frequency, as (inner, outer)
#: fractions of the Nyquist radius; ``freqnoise-1`` is the highest band.
FREQUENCY_BANDS: tuple[tuple[float, float], ...] = (
    (0.75, 0.80),
    (0.50, 0.55),
    (0.25, 0.30),
    (0.05, 0.10),
)

#: [paper] standard deviation of the white noise before band filtering.
FREQUENCY_NOISE_SIGMA = 40.0

#: Fill for pixels a transform brings in from outside the available image.
BORDER_MODE = cv2.BORDER_REFLECT_101


def _generator(rng: Rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be an int seed or a numpy Generator, got {rng!r}")


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _add_clipped(image: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def derive_seed(global_seed: int, image_id: str | int) -> int:
    """Per-image seed: ``zlib.crc32(f"{global_seed}/{image_id}")``, stable across runs and order."""
    return zlib.crc32(f"{global_seed}/{image_id}".encode("utf-8"))


# --- photometric degradations -------------------------------------------------


def box_blur(image: np.ndarray, k: int) -> np.ndarray:
    """[code] ``cv2.blur`` with a ``k x k`` box (the paper uses k = 2, 4, 6, 8)."""
    image = _check_image(image)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"blur kernel size must be a positive int, got {k!r}")
    return cv2.blur(image, (int(k), int(k)))


def gaussian_noise(image: np.ndarray, sigma: float, rng: Rng) -> np.ndarray:
    """Add N(0, sigma^2) noise on the 0-255 scale, round and clip to uint8."""
    image = _check_image(image)
    if sigma < 0:
        raise ConfigError(f"noise sigma must be >= 0, got {sigma}")
    return _add_clipped(image, _generator(rng).normal(0.0, sigma, size=image.shape))


def band_mask(h: int, w: int, r_inner: float, r_outer: float) -> np.ndarray:
    """Boolean ring ``r_inner <= rho < r_outer`` on the centred (fftshifted) ``h x w`` spectrum.

    ``rho`` is the frequency as a fraction of Nyquist (module docstring). The
    mask is point-symmetric about the zero frequency, so band-filtered real
    noise stays real.
    """
    if not 0 <= r_inner < r_outer:
        raise ConfigError(f"band radii must satisfy 0 <= inner < outer, got ({r_inner}, {r_outer})")
    fy = 2 * np.fft.fftshift(np.fft.fftfreq(h))
    fx = 2 * np.fft.fftshift(np.fft.fftfreq(w))
    rho = np.hypot(fy[:, None], fx[None, :])
    return (rho >= r_inner) & (rho < r_outer)


def band_noise(
    shape: Sequence[int], band: tuple[float, float], rng: Rng, sigma: float = FREQUENCY_NOISE_SIGMA
) -> np.ndarray:
    """Real band-limited noise ``Re(ifft2(ifftshift(M * fftshift(fft2(N)))))``, before it is added.

    ``N ~ N(0, sigma^2)`` has ``shape`` ``(H, W, C)``; each channel is filtered
    independently with the ring ``band`` (see :func:`band_mask`).
    """
    h, w = int(shape[0]), int(shape[1])
    noise = _generator(rng).normal(0.0, sigma, size=tuple(shape))
    spectrum = np.fft.rfft2(noise, axes=(0, 1)) * _half_band_mask(h, w, *band)[:, :, None]
    return np.fft.irfft2(spectrum, s=(h, w), axes=(0, 1))


@functools.lru_cache(maxsize=64)
def _half_band_mask(h: int, w: int, r_inner: float, r_outer: float) -> np.ndarray:
    """:func:`band_mask` unshifted and cut to ``rfft2``'s half spectrum (read-only, cached per size and band).

    The ring is point-symmetric, so the masked spectrum of real noise is
    Hermitian and ``irfft2`` of its half equals ``Re(ifft2(...))`` of the whole
    (to rounding) at ~1/3 of the cost: the demo adds frequency noise to every
    FAIR1M crop and Cityscapes val image at each band.
    """
    mask = np.fft.ifftshift(band_mask(h, w, r_inner, r_outer))[:, : w // 2 + 1].copy()
    mask.flags.writeable = False
    return mask


def frequency_noise(
    image: np.ndarray, band: tuple[float, float], rng: Rng, sigma: float = FREQUENCY_NOISE_SIGMA
) -> np.ndarray:
    """[paper] ``I' = clip(I + band_noise)``: white noise (sigma 40) kept in one frequency ring."""
    image = _check_image(image)
    return _add_clipped(image, band_noise(image.shape, band, rng, sigma))


# --- geometric transforms -----------------------------------------------------


class CropContext(NamedTuple):
    """The larger image a crop was cut from, and the crop's top-left corner in it.

    Given to a geometric transform, pixels that move into the crop are taken
    from the real surroundings instead of a synthetic border fill.
    """

    source: np.ndarray
    x0: int
    y0: int


def _warp(image: np.ndarray, affine: np.ndarray, context: CropContext | None) -> np.ndarray:
    """Render ``image`` under ``affine`` (bilinear), from ``context`` where given."""
    h, w = image.shape[:2]
    if context is None:
        return cv2.warpAffine(image, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=BORDER_MODE)
    source = _check_image(context.source)
    crop = source[context.y0 : context.y0 + h, context.x0 : context.x0 + w]
    if crop.shape != image.shape or not np.array_equal(crop, image):
        raise ValueError(
            f"CropContext at (x0={context.x0}, y0={context.y0}) in a source of "
            f"{source.shape[1]}x{source.shape[0]} does not contain this {w}x{h} crop"
        )
    # Source coordinates s map to crop coordinates s - (x0, y0), then through affine.
    in_source = affine.copy()
    in_source[:, 2] -= affine[:, :2] @ np.array([context.x0, context.y0], dtype=np.float64)
    return cv2.warpAffine(source, in_source, (w, h), flags=cv2.INTER_LINEAR, borderMode=BORDER_MODE)


def _centre(image: np.ndarray) -> tuple[float, float]:
    h, w = image.shape[:2]
    return (w - 1) / 2.0, (h - 1) / 2.0


def shift_horizontal(
    image: np.ndarray, dx: float, context: CropContext | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Move the content ``dx`` px to the right; returns ``(image, affine)``.

    The ``dx`` columns entering on the left come from ``context`` when given,
    else from a mirror of the image (``BORDER_REFLECT_101``).
    """
    image = _check_image(image)
    affine = np.array([[1.0, 0.0, float(dx)], [0.0, 1.0, 0.0]])
    return _warp(image, affine, context), affine


def rotate(
    image: np.ndarray, angle_deg: float, context: CropContext | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate ``angle_deg`` counter-clockwise (as displayed) about the centre, bilinear."""
    image = _check_image(image)
    affine = cv2.getRotationMatrix2D(_centre(image), float(angle_deg), 1.0)
    return _warp(image, affine, context), affine


def scale(
    image: np.ndarray, factor: float, context: CropContext | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Zoom by ``factor`` about the centre (> 1 magnifies), bilinear."""
    image = _check_image(image)
    if factor <= 0:
        raise ConfigError(f"scale factor must be > 0, got {factor}")
    affine = cv2.getRotationMatrix2D(_centre(image), 0.0, float(factor))
    return _warp(image, affine, context), affine


def patch_correspondence(
    affine: np.ndarray, image_hw: Sequence[int], grid: int | Sequence[int]
) -> np.ndarray:
    """For each TRANSFORMED patch (row-major), the ORIGINAL patch holding its centre, or -1.

    The centre of transformed patch ``(r, c)`` is mapped back through the
    inverse of ``affine``; ``-1`` when it lands outside the image (those
    patches have no "same patch": the upper-bound curve of Fig. 6).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (2, 3):
        raise ValueError(f"expected a 2x3 affine matrix, got shape {affine.shape}")
    h, w = int(image_hw[0]), int(image_hw[1])
    gh, gw = as_size(grid, "patch grid")
    ph, pw = h / gh, w / gw
    cy, cx = np.meshgrid((np.arange(gh) + 0.5) * ph - 0.5, (np.arange(gw) + 0.5) * pw - 0.5,
                         indexing="ij")
    centres = np.stack([cx.ravel(), cy.ravel()])
    original = np.linalg.solve(affine[:, :2], centres - affine[:, 2:3])
    # Back to edge coordinates (pixel x spans [x - 0.5, x + 0.5)) to find the containing patch.
    ex, ey = original[0] + 0.5, original[1] + 0.5
    inside = (ex >= 0) & (ex < w) & (ey >= 0) & (ey < h)
    col = np.floor(ex / pw).astype(np.int64).clip(0, gw - 1)
    row = np.floor(ey / ph).astype(np.int64).clip(0, gh - 1)
    return np.where(inside, row * gw + col, -1)


# --- named variants -------------------------------------------------------------


#: kind -> type of its level (None: no level).
VARIANT_KINDS: dict[str, type | None] = {
    "clean": None,
    "blur": int,  # box kernel size, px
    "noise": float,  # Gaussian sigma, 0-255 scale
    "freqnoise": int,  # 1-based index into the bands, 1 = highest frequency
    "shift": float,  # px to the right
    "rotate": float,  # degrees counter-clockwise
    "scale": float,  # zoom factor
}


class Variant(NamedTuple):
    """A degradation or transform, e.g. ``Variant("blur", 4)`` named ``"blur-4"``."""

    kind: str
    level: float | int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.level is None else f"{self.kind}-{self.level:g}"


def parse_variant(name: str) -> Variant:
    """``"clean"``, ``"blur-4"``, ``"noise-20"``, ``"freqnoise-2"``, ``"rotate--5"`` -> :class:`Variant`."""
    kind, sep, level_text = name.partition("-")
    if kind not in VARIANT_KINDS:
        raise ConfigError(
            f"unknown image variant {name!r}; expected 'clean' or '<kind>-<level>' "
            f"with kind in {sorted(k for k in VARIANT_KINDS if k != 'clean')}"
        )
    level_type = VARIANT_KINDS[kind]
    if level_type is None:
        if sep:
            raise ConfigError(f"variant {name!r}: 'clean' takes no level")
        return Variant(kind)
    try:
        level = level_type(level_text)
    except ValueError:
        raise ConfigError(
            f"variant {name!r}: level {level_text!r} is not a valid {level_type.__name__}"
        ) from None
    return Variant(kind, level)


def apply_variant(
    image: np.ndarray,
    variant: str | Variant,
    seed: int,
    *,
    context: CropContext | None = None,
    bands: Sequence[tuple[float, float]] = FREQUENCY_BANDS,
    freq_sigma: float = FREQUENCY_NOISE_SIGMA,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a named variant; returns ``(image, affine)`` (identity affine for photometric ones).

    ``seed`` is the per-image seed (see :func:`derive_seed`); ``context`` is used
    by the geometric kinds only.
    """
    image = _check_image(image)
    # Round-trip through the name so hand-built Variants get the same validation.
    kind, level = parse_variant(variant if isinstance(variant, str) else variant.name)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if kind == "clean":
        return image.copy(), identity
    if kind == "blur":
        return box_blur(image, level), identity
    if kind == "noise":
        return gaussian_noise(image, level, seed), identity
    if kind == "freqnoise":
        if not 1 <= level <= len(bands):
            raise ConfigError(f"freqnoise band {level} out of range 1..{len(bands)} (bands {list(bands)})")
        return frequency_noise(image, bands[level - 1], seed, freq_sigma), identity
    if kind == "shift":
        return shift_horizontal(image, level, context)
    if kind == "rotate":
        return rotate(image, level, context)
    if kind == "scale":
        return scale(image, level, context)
    raise ConfigError(f"unknown image variant kind {kind!r}; expected one of {sorted(VARIANT_KINDS)}")
