"""Extraction loop: streamed output equals a direct model call, metadata order, OOM back-off."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import timm
import torch
from torch.utils.data import Dataset

from vitlocal.errors import ConfigError
from vitlocal.features.engine import ImageTiles, extract
from vitlocal.features.store import FeatureWriter, read_cls, read_features

ATTRS = {
    "model": "tiny",
    "arch": "vit_tiny_patch16_224",
    "weights": "random(seed=0)",
    "variant": "clean",
    "dataset": "synthetic",
    "split": "train",
    "preset": "test",
    "patch_labels": "nearest_exact",
    "seed": 0,
}
INPUT = (32, 64)  # tiles are already model-sized: non-square so rows and columns cannot be swapped
GRID = (2, 4)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
LAYERS = [2, 4]
TILES_PER_IMAGE = [3, 1, 4, 2]


class TinyViT:
    """``forward_layers`` adapter around a 4-block timm ViT (width 48): normalised tokens of each block."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.vit = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, embed_dim=48, depth=4, num_heads=3, img_size=INPUT
        ).eval()

    def __call__(self, x, layers):
        tokens = self.vit.patch_embed(x)
        tokens = self.vit._pos_embed(tokens)
        out = {}
        for index, block in enumerate(self.vit.blocks, start=1):
            tokens = block(tokens)
            if index in layers:
                out[index] = self.vit.norm(tokens)
        return {k: t[:, 1:] for k, t in out.items()}, {k: t[:, 0] for k, t in out.items()}


class RandomTiles(Dataset):
    """Seeded uint8 tiles, a different number per image, random patch labels."""

    def __init__(self, tiles_per_image=TILES_PER_IMAGE, fail_at: int | None = None) -> None:
        self.items = []
        for i, n in enumerate(tiles_per_image):
            rng = np.random.default_rng(i)
            self.items.append(
                ImageTiles(
                    sample_id=f"img{i}",
                    tiles=rng.integers(0, 256, (n, *INPUT, 3), dtype=np.uint8),
                    labels=rng.integers(0, 20, (n, *GRID), dtype=np.uint8),
                    image_hw=(INPUT[0], INPUT[1] * n),
                    extra={"label_majority": rng.integers(0, 20, (n, *GRID), dtype=np.uint8)},
                )
            )
        self.fail_at = fail_at

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ImageTiles:
        if i == self.fail_at:
            raise OSError(f"cannot decode img{i}")
        return self.items[i]


def normalise(tiles, mean, std, out_size):
    """Test preprocessing: tiles already have the model's size, so only divide and normalise."""
    assert tuple(tiles.shape[1:3]) == tuple(out_size)
    x = (tiles.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    return x.transpose(0, 3, 1, 2)


def run(path, model, source=None, **kwargs):
    kwargs = {"batch_size": 3, "progress": False, **kwargs}
    with FeatureWriter(path, ATTRS, dtype="float32") as writer:
        return extract(
            source or RandomTiles(),
            model,
            preprocess=normalise,
            layers=LAYERS,
            mean=MEAN,
            std=STD,
            out_size=INPUT,
            grid=GRID,
            writer=writer,
            **kwargs,
        )


@pytest.fixture(scope="module")
def model():
    return TinyViT()


@pytest.fixture(scope="module")
def direct(model):
    """Reference: all tiles of all images through the model in one call."""
    source = RandomTiles()
    tiles = np.concatenate([item.tiles for item in source.items])
    with torch.inference_mode():
        patch, cls = model(torch.from_numpy(normalise(tiles, MEAN, STD, INPUT)), LAYERS)
    return {k: v.reshape(-1, 48).numpy() for k, v in patch.items()}, {k: v.numpy() for k, v in cls.items()}


def test_streamed_extraction_equals_direct_call(tmp_path, model, direct):
    path = tmp_path / "f.parquet"
    stats = run(path, model)
    assert (stats.images, stats.tiles, stats.patches, stats.batch_size) == (4, 10, 80, 3)
    meta, got = read_features(path)
    tiles, got_cls = read_cls(path)
    for layer in LAYERS:
        np.testing.assert_allclose(got[layer], direct[0][layer], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_cls[layer], direct[1][layer], rtol=1e-5, atol=1e-5)
    assert tiles["sample_id"].tolist() == [f"img{i}" for i, n in enumerate(TILES_PER_IMAGE) for _ in range(n)]
    assert tiles["tile_id"].tolist() == [t for n in TILES_PER_IMAGE for t in range(n)]


def test_patch_metadata_order(tmp_path, model):
    path = tmp_path / "f.parquet"
    run(path, model, batch_size=4)
    meta, _ = read_features(path, layers=[])
    source = RandomTiles()
    rows = [
        (f"img{i}", t, r, c, item.labels[t, r, c], item.extra["label_majority"][t, r, c], *item.image_hw)
        for i, item in enumerate(source.items)
        for t in range(len(item.tiles))
        for r in range(GRID[0])
        for c in range(GRID[1])
    ]
    columns = ["sample_id", "tile_id", "patch_row", "patch_col", "label", "label_majority", "image_h", "image_w"]
    assert list(meta[columns].itertuples(index=False, name=None)) == rows


def test_workers_give_the_same_file_content(tmp_path, model):
    # Use OpenCV's thread pool in this process first: forked workers then deadlocked in cv2.
    cv2.resize(np.zeros((2048, 2048), np.float32), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    run(tmp_path / "a.parquet", model, num_workers=0)
    run(tmp_path / "b.parquet", model, num_workers=1, images_per_load=2, batch_size=5)
    meta_a, a = read_features(tmp_path / "a.parquet")
    meta_b, b = read_features(tmp_path / "b.parquet")
    assert meta_a.equals(meta_b)
    for layer in LAYERS:
        np.testing.assert_allclose(a[layer], b[layer], rtol=1e-5, atol=1e-5)


class OomAbove:
    """Fake model that runs ``model`` but raises out-of-memory for batches larger than ``limit``."""

    def __init__(self, model, limit: int, error=torch.cuda.OutOfMemoryError) -> None:
        self.model, self.limit, self.error = model, limit, error
        self.sizes: list[int] = []

    def __call__(self, x, layers):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(x, layers)


def test_oom_halves_batch_and_retries(tmp_path, model, direct):
    fake = OomAbove(model, limit=2)
    stats = run(tmp_path / "f.parquet", fake, batch_size=8)
    assert stats.batch_size == 2
    assert fake.sizes[:3] == [8, 4, 2]  # first batch: 8 fails, 4 fails, then 2 sticks
    assert max(size for size in fake.sizes[3:]) <= 2
    _, got = read_features(tmp_path / "f.parquet")
    np.testing.assert_allclose(got[4], direct[0][4], rtol=1e-5, atol=1e-5)


def test_plain_runtime_oom_message_also_backs_off(tmp_path, model):
    fake = OomAbove(model, limit=1, error=RuntimeError)
    assert run(tmp_path / "f.parquet", fake, batch_size=4).batch_size == 1


def test_oom_at_batch_one_propagates_and_leaves_no_file(tmp_path, model):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run(tmp_path / "f.parquet", OomAbove(model, limit=0), batch_size=2)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_are_not_retried(tmp_path, model):
    fake = OomAbove(model, limit=0, error=lambda _: RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(tmp_path / "f.parquet", fake, batch_size=4)
    assert fake.sizes == [4]  # the first batch (images 0 and 1) fails once, without retry


def test_failing_source_leaves_no_file(tmp_path, model):
    with pytest.raises(OSError, match="cannot decode img2"):
        run(tmp_path / "f.parquet", model, source=RandomTiles(fail_at=2))
    assert list(tmp_path.iterdir()) == []


def test_grid_mismatch_is_explained(tmp_path, model):
    source = RandomTiles()
    for item in source.items:
        item.labels = np.zeros((len(item.tiles), 4, 2), np.uint8)
    with pytest.raises(ConfigError, match=r"img0.*'label' has shape \(3, 4, 2\); expected .* \(3, 2, 4\)"):
        run(tmp_path / "f.parquet", model, source=source)
