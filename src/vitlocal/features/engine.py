"""The extraction loop: tiled images -> model -> feature file, decoupled from datasets.

A *tile source* is a ``torch.utils.data.Dataset`` whose item ``i`` is one
source image already decoded and tiled (:class:`ImageTiles`). DataLoader
workers run the source and the preprocessing (divide, normalise, resize), so
the main process only batches tiles, runs the model under
``torch.inference_mode`` and streams the tokens to a
:class:`~vitlocal.features.store.FeatureWriter`. Model batches are counted in
tiles, independent of how many tiles an image has; if the device runs out of
memory the batch is halved and the same tiles are retried.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vitlocal.errors import ConfigError
from vitlocal.features.store import FeatureWriter
from vitlocal.heap import fix_mmap_threshold

log = logging.getLogger(__name__)

Tokens = dict[int, torch.Tensor]
#: ``forward_layers``-like: ``(x (B,3,H,W), layers) -> (patch {L: (B,N,C)}, cls {L: (B,C)} | None)``.
ForwardFn = Callable[[torch.Tensor, Sequence[int]], tuple[Tokens, Tokens | None]]
#: ``tiling.preprocess_tiles``-like: ``(uint8 (n,h,w,3), mean, std, out_size) -> float32 (n,3,H,W)``.
PreprocessFn = Callable[[np.ndarray, Sequence[float], Sequence[float], "int | Sequence[int]"], np.ndarray]
Meta = dict[str, np.ndarray]


@dataclass
class ImageTiles:
    """One source image, decoded once and tiled: what a tile source returns per item.

    ``labels`` and every ``extra`` array are per patch, ``(n_tiles, gh, gw)``
    on the model's patch grid (e.g. ``label_majority``, a track id).
    """

    sample_id: str
    tiles: np.ndarray
    labels: np.ndarray
    image_hw: tuple[int, int]
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtractStats:
    """What one :func:`extract` run did; ``batch_size`` is the one in use at the end (after back-off)."""

    images: int
    tiles: int
    patches: int
    seconds: float
    batch_size: int


def patch_meta(item: ImageTiles, grid: tuple[int, int]) -> Meta:
    """Metadata rows of every patch of ``item``, ordered (tile, row, col) like the model's tokens."""
    n_tiles = len(item.tiles)
    gh, gw = grid
    shape = (n_tiles, gh, gw)
    arrays = {"label": item.labels, **item.extra}
    for name, values in arrays.items():
        if np.shape(values) != shape:
            raise ConfigError(
                f"sample {item.sample_id!r}: {name!r} has shape {np.shape(values)}; expected "
                f"(n_tiles, gh, gw) = {shape} for {n_tiles} tiles on a {gh}x{gw} patch grid"
            )
    tile, row, col = (a.reshape(-1) for a in np.indices(shape, dtype=np.int16))
    n = tile.size
    return {
        "sample_id": np.full(n, item.sample_id, dtype=object),
        "tile_id": tile,
        "patch_row": row,
        "patch_col": col,
        "image_h": np.full(n, item.image_hw[0], dtype=np.int32),
        "image_w": np.full(n, item.image_hw[1], dtype=np.int32),
        **{name: np.asarray(values).reshape(-1) for name, values in arrays.items()},
    }


class PreparedTiles(Dataset):
    """Worker-side view of a tile source: item -> (model input float32 (n,3,H,W), patch metadata)."""

    def __init__(
        self,
        source: Dataset,
        preprocess: PreprocessFn,
        mean: Sequence[float],
        std: Sequence[float],
        out_size: int | Sequence[int],
        grid: tuple[int, int],
    ) -> None:
        self.source, self.preprocess = source, preprocess
        self.mean, self.std, self.out_size, self.grid = mean, std, out_size, grid

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Meta]:
        item: ImageTiles = self.source[index]
        tiles = np.asarray(item.tiles)
        if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3 or len(tiles) == 0:
            raise ConfigError(
                f"sample {item.sample_id!r}: expected uint8 tiles (n>0, h, w, 3), got {tiles.dtype} {tiles.shape}"
            )
        x = torch.from_numpy(np.ascontiguousarray(self.preprocess(tiles, self.mean, self.std, self.out_size)))
        return x, patch_meta(item, self.grid)


def concat_collate(items: list[tuple[torch.Tensor, Meta]]) -> tuple[torch.Tensor, Meta, int]:
    """Concatenate the tiles and metadata of several images; also return the image count."""
    x = torch.cat([tiles for tiles, _ in items])
    keys = items[0][1].keys()
    meta = {key: np.concatenate([m[key] for _, m in items]) for key in keys}
    return x, meta, len(items)


def _worker_init(_: int) -> None:
    """One thread per worker: the workers already run in parallel, oversubscription only slows them."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def is_oom(err: BaseException) -> bool:
    """CUDA (or other backend) out-of-memory, as raised by torch."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err)
    )


class BackoffForward:
    """Runs the model in chunks of ``batch_size`` tiles, halving it on out-of-memory.

    A failed chunk is retried with the smaller size, which then stays for the
    rest of the run (the next batch would fail the same way). Tokens come back
    in ``out_dtype`` (the feature file's), cast by torch on the device: faster
    than numpy's cast on the host, and half the bytes to copy for float16.
    """

    def __init__(
        self,
        model: ForwardFn,
        layers: Sequence[int],
        device: torch.device,
        autocast: torch.dtype | None,
        batch_size: int,
        out_dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.layers, self.device = model, list(layers), device
        self.autocast = autocast
        self.batch_size = batch_size
        self.out_dtype = out_dtype

    def __call__(self, x: torch.Tensor) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray] | None]:
        """Patch tokens ``{L: (n_tiles, N, C)}`` and CLS ``{L: (n_tiles, C)}`` (or ``None``), contiguous numpy."""
        parts: list[tuple[Tokens, Tokens | None]] = []
        start = 0
        while start < len(x):
            size = self.batch_size
            try:
                parts.append(self._run(x[start : start + size]))
            except RuntimeError as err:
                if not is_oom(err) or size == 1:
                    raise
                oom = True
            else:
                oom = False
            if oom:  # outside the except block, so the failed batch's tensors can be freed
                self._shrink(size)
                continue
            start += size
        join = lambda ts: (ts[0] if len(ts) == 1 else torch.cat(ts)).numpy()  # noqa: E731  (no copy of one part)
        patch = {layer: join([p[layer] for p, _ in parts]) for layer in self.layers}
        cls = None if parts[0][1] is None else {layer: join([c[layer] for _, c in parts]) for layer in self.layers}
        return patch, cls

    def _shrink(self, size: int) -> None:
        self.batch_size = size // 2
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("out of memory with %d tiles per batch; retrying with %d", size, self.batch_size)

    def _run(self, x: torch.Tensor) -> tuple[Tokens, Tokens | None]:
        amp = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), amp:
            patch, cls = self.model(x.to(self.device, non_blocking=True), self.layers)
        # Contiguous: the patch tokens are a strided view behind the prefix tokens.
        to_cpu = lambda t: t.to(self.out_dtype, memory_format=torch.contiguous_format).cpu()  # noqa: E731
        return (
            {layer: to_cpu(patch[layer]) for layer in self.layers},
            None if cls is None else {layer: to_cpu(cls[layer]) for layer in self.layers},
        )


def default_autocast(device: torch.device) -> torch.dtype | None:
    """bfloat16 on CUDA (ViT features are insensitive to it, throughput doubles); full precision on CPU."""
    return torch.bfloat16 if device.type == "cuda" else None


class _TileBuffer:
    """Re-cuts loader output (whole images) into model batches of exactly ``size`` tiles."""

    def __init__(self, patches_per_tile: int) -> None:
        self.per_tile = patches_per_tile
        self.tiles: list[torch.Tensor] = []
        self.metas: list[Meta] = []
        self.count = 0

    def add(self, x: torch.Tensor, meta: Meta) -> None:
        self.tiles.append(x)
        self.metas.append(meta)
        self.count += len(x)

    def take(self, size: int) -> tuple[torch.Tensor, Meta]:
        x = torch.cat(self.tiles)
        meta = {key: np.concatenate([m[key] for m in self.metas]) for key in self.metas[0]}
        cut = size * self.per_tile
        self.tiles = [x[size:]] if len(x) > size else []
        self.metas = [{k: v[cut:] for k, v in meta.items()}] if len(x) > size else []
        self.count = max(0, len(x) - size)
        return x[:size], {k: v[:cut] for k, v in meta.items()}


def _write_batch(
    writer: FeatureWriter, forward: BackoffForward, x: torch.Tensor, meta: Meta, grid: tuple[int, int]
) -> None:
    patch, cls = forward(x)
    n_patches = grid[0] * grid[1]
    for layer, tokens in patch.items():
        if tokens.shape[1] != n_patches:
            raise ConfigError(
                f"model returned {tokens.shape[1]} patch tokens per tile at layer {layer}; the patch "
                f"grid {grid[0]}x{grid[1]} expects {n_patches} (wrong grid or input size?)"
            )
    embeddings = {layer: tokens.reshape(-1, tokens.shape[-1]) for layer, tokens in patch.items()}
    writer.write(pd.DataFrame(meta), embeddings, cls)


def extract(
    source: Dataset,
    model: ForwardFn,
    *,
    preprocess: PreprocessFn,
    layers: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    out_size: int | Sequence[int],
    grid: tuple[int, int],
    writer: FeatureWriter,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    autocast: torch.dtype | None | str = "auto",
    images_per_load: int = 1,
    progress: bool = True,
) -> ExtractStats:
    """Run ``model`` over every tile of ``source`` and stream the tokens to ``writer``.

    ``grid`` is the patch grid of one tile (``(gh, gw)``); ``autocast="auto"``
    means bfloat16 on CUDA and none on CPU. ``images_per_load`` images travel
    together from a worker (raise it for sources with one small tile per
    image). Workers are spawned, so ``source`` and ``preprocess`` must be
    picklable (module-level classes and functions). The writer is left open:
    the caller's ``with`` block commits it.
    """
    fix_mmap_threshold()  # flat peak memory over a long file (vitlocal.heap)
    device = torch.device(device)
    amp = default_autocast(device) if autocast == "auto" else autocast
    forward = BackoffForward(model, layers, device, amp, batch_size, getattr(torch, writer.dtype.name))
    loader = DataLoader(
        PreparedTiles(source, preprocess, mean, std, out_size, grid),
        batch_size=images_per_load,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=concat_collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if num_workers > 0 else None,
        # Forked workers deadlock in OpenCV when the parent has used its thread pool (e.g. to
        # write synthetic data); spawned ones start clean. Hence a picklable source/preprocess.
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )
    buffer = _TileBuffer(grid[0] * grid[1])
    images = tiles = 0
    start = time.perf_counter()
    with tqdm(total=len(source), unit="img", disable=not progress, desc="extract") as bar:
        for x, meta, n_images in loader:
            buffer.add(x, meta)
            while buffer.count >= batch_size:
                _write_batch(writer, forward, *buffer.take(batch_size), grid)
            images += n_images
            tiles += len(x)
            bar.update(n_images)
        if buffer.count:
            _write_batch(writer, forward, *buffer.take(buffer.count), grid)
    return ExtractStats(images, tiles, tiles * grid[0] * grid[1], time.perf_counter() - start, forward.batch_size)
