"""Tiling, patch labels and stitching against cv2 and hand-computed references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vitlocal.errors import ConfigError, LabelError
from vitlocal.tiling import (
    PRESETS,
    TilingSpec,
    get_preset,
    nearest_exact_indices,
    patch_labels,
    pixel_to_patch,
    preprocess_tiles,
    resize_nearest_exact,
    stitch,
    tile_image,
    untile,
)

RNG = np.random.default_rng(0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _off_tie(src: int, dst: int) -> np.ndarray:
    """Outputs whose exact source coordinate (i + 0.5) * src / dst is not an integer.

    At exact ties OpenCV 4 (the authors') and OpenCV >= 5 / Pillow disagree, so
    the installed cv2 is only a reference off ties.
    """
    i = np.arange(dst)
    return ((2 * i + 1) * src) % (2 * dst) != 0


def test_nearest_exact_ties_follow_opencv4_on_cityscapes_tiles():
    # 256 -> 14: floor((i + 0.5) * 256 / 14); i = 3 and 10 are exact ties (64.0, 192.0).
    # OpenCV 4 fixed point: step = (256 << 16 + 7) // 14 = 1198373, start = 599186,
    # (3 * 1198373 + 599186) >> 16 = 4194305 >> 16 = 64.
    expected = [9, 27, 45, 64, 82, 100, 118, 137, 155, 173, 192, 210, 228, 246]
    assert nearest_exact_indices(256, 14).tolist() == expected
    # 64 -> 14: tie at i = 3 (16.0) falls to 15 in OpenCV 4's fixed point
    # (step 299593, start 149796: (3 * 299593 + 149796) >> 16 = 1048575 >> 16 = 15).
    assert nearest_exact_indices(64, 14)[3] == 15
    assert nearest_exact_indices(256, 16).tolist() == list(range(8, 256, 16))


@pytest.mark.parametrize(
    "src_hw, dst_hw",
    [((256, 256), (14, 14)), ((256, 256), (16, 16)), ((64, 64), (14, 14)),
     ((224, 224), (14, 14)), ((672, 1120), (42, 70)), ((30, 45), (7, 6))],
)
def test_patch_labels_nearest_matches_cv2(src_hw, dst_hw):
    labels = RNG.integers(0, 19, size=(2, *src_hw), dtype=np.uint8)
    labels[0, :5, :5] = 255
    ours = patch_labels(labels, dst_hw)
    assert ours.shape == (2, *dst_hw) and ours.dtype == np.uint8
    rows = _off_tie(src_hw[0], dst_hw[0])
    cols = _off_tie(src_hw[1], dst_hw[1])
    for tile, out in zip(labels, ours):
        ref = cv2.resize(tile, dst_hw[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(out[rows][:, cols], ref[rows][:, cols])


def test_patch_labels_single_map_keeps_2d():
    labels = RNG.integers(0, 5, size=(224, 224), dtype=np.uint8)
    np.testing.assert_array_equal(patch_labels(labels, 14), labels[8::16, 8::16])


def test_stitch_equals_per_tile_cv2_upsampling():
    spec = TilingSpec(None, 2, 3)
    preds = RNG.integers(0, 19, size=(6, 14, 14), dtype=np.uint8)
    full = stitch(preds, spec, (256, 256))
    assert full.shape == (512, 768)
    for t in range(6):
        r, c = divmod(t, 3)
        ref = cv2.resize(preds[t], (256, 256), interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(full[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256], ref)


def test_tile_untile_round_trip_cityscapes_geometry():
    spec = get_preset("cityscapes")
    image = RNG.integers(0, 256, size=(1024, 2048, 3), dtype=np.uint8)
    tiles = tile_image(image, spec)
    assert tiles.shape == (32, 256, 256, 3)
    # Row-major: tile 9 is row 1, column 1.
    np.testing.assert_array_equal(tiles[9], image[256:512, 256:512])
    np.testing.assert_array_equal(untile(tiles, spec), image)

    labels = RNG.integers(0, 19, size=(256, 512), dtype=np.uint8)  # small demo image
    label_tiles = tile_image(labels, spec)
    assert label_tiles.shape == (32, 64, 64)
    np.testing.assert_array_equal(untile(label_tiles, (4, 8)), labels)


@pytest.mark.parametrize("method", ["nearest_exact", "majority"])
def test_stitch_of_patch_aligned_labels_is_exact(method):
    spec = get_preset("cityscapes")
    # 256x512 image -> 64 px tiles -> 16x16 grid -> 4 px patches; regions aligned with them.
    blocks = RNG.integers(0, 19, size=(64, 128), dtype=np.uint8)
    labels = np.kron(blocks, np.ones((4, 4), dtype=np.uint8))
    per_patch = patch_labels(tile_image(labels, spec), 16, method=method)
    np.testing.assert_array_equal(stitch(per_patch, spec, (64, 64)), labels)


def test_majority_hand_example():
    tile = np.array(
        [[1, 1, 3, 3],
         [2, 255, 4, 4],
         [255, 255, 255, 255],
         [255, 255, 255, 7]],
        dtype=np.uint8,
    )
    out = patch_labels(tile, 2, method="majority")
    # (0,0): {1,1,2} -> 1; (0,1): 3 and 4 tie -> smallest 3; (1,0): all ignore; (1,1): 7.
    np.testing.assert_array_equal(out, [[1, 3], [255, 7]])


def test_majority_matches_loop_reference_on_non_divisible_sizes():
    h, w, gh, gw = 30, 45, 7, 6
    labels = RNG.integers(0, 4, size=(3, h, w), dtype=np.uint8)
    labels[labels == 3] = 255
    labels[1, :10, :10] = 255
    out = patch_labels(labels, (gh, gw), method="majority")
    centres_y, centres_x = np.arange(h) + 0.5, np.arange(w) + 0.5
    for n in range(3):
        for r in range(gh):
            ys = (centres_y >= r * h / gh) & (centres_y < (r + 1) * h / gh)
            for c in range(gw):
                xs = (centres_x >= c * w / gw) & (centres_x < (c + 1) * w / gw)
                values = labels[n][np.ix_(ys, xs)].ravel()
                values = values[values != 255]
                if values.size == 0:
                    expected = 255
                else:
                    uniq, counts = np.unique(values, return_counts=True)
                    expected = uniq[np.argmax(counts)]
                assert out[n, r, c] == expected, (n, r, c)


def test_pixel_to_patch_blocks_when_divisible():
    np.testing.assert_array_equal(pixel_to_patch(8, 2), [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(pixel_to_patch(5, 2), [0, 0, 1, 1, 1])  # centre 2.5 -> cell 1


def test_preprocess_tiles_normalises_then_resizes_bicubic():
    tiles = RNG.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    out = preprocess_tiles(tiles, IMAGENET_MEAN, IMAGENET_STD, 56)
    assert out.shape == (2, 3, 56, 56) and out.dtype == np.float32
    for t in range(2):
        norm = (tiles[t] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        ref = cv2.resize(norm, (56, 56), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
        np.testing.assert_allclose(out[t], ref, atol=1e-4)
    same = preprocess_tiles(tiles, IMAGENET_MEAN, IMAGENET_STD, (64, 64))
    np.testing.assert_allclose(same[0, 0], (tiles[0, :, :, 0] / 255 - 0.485) / 0.229, atol=1e-5)


def test_presets_geometry():
    ade = get_preset("ade20k")
    assert ade.tile_hw(ade.image_hw((512, 683))) == (224, 224)
    assert PRESETS["cityscapes"].tile_hw(PRESETS["cityscapes"].image_hw((1024, 2048))) == (256, 256)
    image = RNG.integers(0, 256, size=(512, 683, 3), dtype=np.uint8)
    assert tile_image(image, ade).shape == (6, 224, 224, 3)
    labels = RNG.integers(0, 150, size=(512, 683), dtype=np.uint8)
    resized = tile_image(labels, ade)
    assert resized.shape == (6, 224, 224)
    np.testing.assert_array_equal(
        untile(resized, ade), resize_nearest_exact(labels, (448, 672))
    )
    assert set(np.unique(resized)) <= set(np.unique(labels))

    assert tile_image(np.zeros((720, 1280, 3), np.uint8), PRESETS["bdd100k"]).shape == (15, 224, 224, 3)
    full = PRESETS["mot17-full"]
    assert full.out_hw == (672, 1120) and full.patch_grid(16) == (42, 70)
    assert PRESETS["fair1m"].patch_grid(14) == (16, 16)  # DINOv2
    assert TilingSpec(None, 1, 1, [224, 448]).out_hw == (224, 448)


def test_errors_are_explicit():
    with pytest.raises(ConfigError, match="1022x2048 cannot be cut into 4x8"):
        tile_image(np.zeros((1022, 2048), np.uint8), get_preset("cityscapes"))
    with pytest.raises(ConfigError, match="cannot be cut"):
        TilingSpec((449, 672), 2, 3)
    with pytest.raises(ConfigError, match="unknown tiling preset 'kitti'.*cityscapes"):
        get_preset("kitti")
    with pytest.raises(ConfigError, match="rows must be a positive int"):
        TilingSpec(None, 0, 3)
    with pytest.raises(LabelError, match=r"\[19\]"):
        patch_labels(np.full((16, 16), 19, np.uint8), 4, num_classes=19)
    with pytest.raises(ConfigError, match="at least one pixel per patch"):
        patch_labels(np.zeros((8, 8), np.uint8), 14, method="majority")
    with pytest.raises(ConfigError, match="unknown patch-label method"):
        patch_labels(np.zeros((8, 8), np.uint8), 2, method="mode")
    with pytest.raises(ValueError, match="expected 6 tiles"):
        untile(np.zeros((5, 4, 4)), (2, 3))
