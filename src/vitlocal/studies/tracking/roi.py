"""Object features of the tracking study: the frame's patch grid and ROIAlign on it.

[code] Each frame's patch tokens are put back on one grid covering the whole
resized frame (tiles stitched row-major: tile ``t`` of a ``rows x cols`` cut
holds grid rows ``(t // cols) * gh ...`` and columns ``(t % cols) * gw ...``;
the ``full`` variant is one tile). Every box then gets
``torchvision.ops.roi_align`` with a ``roi_size x roi_size`` output, flattened
to ``roi_size² · C``. The paper calls it with ``spatial_scale = 1 /
patch_size`` on boxes in resized-frame pixels; here boxes are mapped from the
original frame straight to grid units (``x · grid_w / image_w``, per axis) and
``spatial_scale = 1``: the same numbers when a tile is the model input (224 px
tiles, 672x1120 frames), and still right when it is not (demo tiles, a whole
frame rounded to the patch size). ROIAlign keeps torchvision's defaults
(``sampling_ratio=-1``: adaptive, ``aligned=False``), as the authors' call did;
``tracking.roi_aligned: true`` shifts the sampling grid by half a patch instead.

Feature files are read as a stream of record batches, and a frame is built as
soon as all of its patches have arrived, wherever they sit in the file: the
result does not depend on row order, and memory holds a few frames, not the
whole file (all 200 BDD100K val videos are ~180 GB of ViT-B tokens).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torchvision.ops import roi_align

from vitlocal.errors import ConfigError, CorruptFileError
from vitlocal.features.store import blob_rows, layer_column, read_attrs

#: torchvision's defaults, recorded in every row's settings (``ALIGNED``: the default of ``tracking.roi_aligned``).
SAMPLING_RATIO = -1
ALIGNED = False
META = ("sample_id", "tile_id", "patch_row", "patch_col", "image_h", "image_w")
#: Rows per record batch when streaming a feature file.
STREAM_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class FrameGrid:
    """How one frame's tiles sit on its patch grid: ``rows x cols`` tiles of ``gh x gw`` patches."""

    rows: int
    cols: int
    gh: int
    gw: int

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], path: str | os.PathLike) -> FrameGrid:
        """From the ``tiling`` and ``grid`` a feature file records (an error names the file if absent)."""
        if "tiling" not in attrs or "grid" not in attrs:
            raise CorruptFileError(f"{path} records no tiling/grid; tracking needs both to rebuild each frame")
        gh, gw = (int(v) for v in attrs["grid"])
        return cls(int(attrs["tiling"]["rows"]), int(attrs["tiling"]["cols"]), gh, gw)

    @property
    def shape(self) -> tuple[int, int]:
        """Patch grid ``(H, W)`` of the whole frame."""
        return self.rows * self.gh, self.cols * self.gw

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols * self.gh * self.gw

    def position(self, tile: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Row-major index on the frame grid of tile-local patch positions."""
        tile, row, col = (np.asarray(a, dtype=np.int64) for a in (tile, row, col))
        if tile.size and (tile.min() < 0 or tile.max() >= self.rows * self.cols or row.min() < 0
                          or row.max() >= self.gh or col.min() < 0 or col.max() >= self.gw):
            raise CorruptFileError(
                f"patch positions (tile {tile.max()}, row {row.max()}, col {col.max()}) do not fit "
                f"{self.rows}x{self.cols} tiles of {self.gh}x{self.gw} patches"
            )
        grid_row = (tile // self.cols) * self.gh + row
        grid_col = (tile % self.cols) * self.gw + col
        return grid_row * (self.cols * self.gw) + grid_col


def boxes_on_grid(boxes: np.ndarray, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> np.ndarray:
    """Boxes ``(N, 4)`` ``x1, y1, x2, y2`` in original-frame pixels -> patch-grid units.

    The frame is resized to the tiled size and the grid covers it exactly, so
    each axis scales by ``grid / original``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sy, sx = grid_hw[0] / image_hw[0], grid_hw[1] / image_hw[1]
    return boxes * np.array([sx, sy, sx, sy])


def roi_features(maps: torch.Tensor, grid_boxes, roi_size: int, *, aligned: bool = ALIGNED) -> torch.Tensor:
    """``(N, C · roi_size²)`` ROIAlign features of boxes given in grid units.

    ``maps``: one ``(C, H, W)`` map with ``grid_boxes`` ``(N, 4)``, or a batch
    ``(B, C, H, W)`` with a list of ``B`` box arrays (rows in list order).
    """
    if maps.ndim == 3:
        maps, grid_boxes = maps[None], [grid_boxes]
    boxes = [torch.as_tensor(np.asarray(b, dtype=np.float32), device=maps.device).reshape(-1, 4)
             if not isinstance(b, torch.Tensor) else b.reshape(-1, 4) for b in grid_boxes]
    if sum(len(b) for b in boxes) == 0:
        return maps.new_zeros((0, maps.shape[1] * roi_size * roi_size))
    pooled = roi_align(maps, boxes, output_size=roi_size, spatial_scale=1.0,
                       sampling_ratio=SAMPLING_RATIO, aligned=aligned)
    return pooled.flatten(1)


@dataclasses.dataclass
class _Partial:
    values: np.ndarray  #: (C, n_patches) float32, grid row-major
    filled: np.ndarray  #: (n_patches,) bool
    image_hw: tuple[int, int]


def iter_frames(
    path: str | os.PathLike, expected: Iterable[str], *, layer: int | None = None,
) -> Iterator[tuple[str, np.ndarray, tuple[int, int]]]:
    """``(sample_id, map (C, H, W) float32, original (h, w))`` of every frame of ``path``, as each completes.

    ``expected``: the sample ids the file must hold, each exactly once with
    every patch exactly once (an error names the first that does not).
    ``layer`` None: the last block stored.
    """
    attrs = read_attrs(path)
    grid = FrameGrid.from_attrs(attrs, path)
    layer = max(int(v) for v in attrs["layers"]) if layer is None else int(layer)
    if layer not in [int(v) for v in attrs["layers"]]:
        raise ConfigError(f"{path}: no layer {layer}; the file has layers {attrs['layers']}")
    dim, dtype = int(attrs["dims"][str(layer)]), np.dtype(attrs["dtype"])
    h, w = grid.shape
    wanted = set(map(str, expected))
    done: set[str] = set()
    partial: dict[str, _Partial] = {}
    column = layer_column(layer)
    reader = pq.ParquetFile(path, memory_map=True, read_dictionary=["sample_id"])
    for batch in reader.iter_batches(batch_size=STREAM_ROWS, columns=[*META, column], use_threads=False):
        ids = batch.column("sample_id")
        codes, names = ids.indices.to_numpy(), ids.dictionary.to_pylist()
        where = grid.position(*(batch.column(c).to_numpy() for c in ("tile_id", "patch_row", "patch_col")))
        heights, widths = batch.column("image_h").to_numpy(), batch.column("image_w").to_numpy()
        vectors = blob_rows(batch.column(column), dtype, dim)
        # Runs of one frame (a whole frame per run when the file is in order, as written).
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
        for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            name = str(names[codes[start]])
            if name not in wanted or name in done:
                what = "is not in the manifest" if name not in wanted else "appears again after it was complete"
                raise CorruptFileError(f"{path}: frame {name!r} {what}")
            frame = partial.get(name)
            if frame is None:
                frame = partial[name] = _Partial(np.zeros((dim, grid.n_patches), np.float32),
                                                 np.zeros(grid.n_patches, bool),
                                                 (int(heights[start]), int(widths[start])))
            at = where[start:stop]
            if frame.filled[at].any() or len(np.unique(at)) != len(at):
                raise CorruptFileError(f"{path}: frame {name!r} holds some patch position twice")
            frame.values[:, at] = vectors[start:stop].T  # cast and transpose in one pass
            frame.filled[at] = True
            if frame.filled.all():
                del partial[name]
                done.add(name)
                yield name, frame.values.reshape(dim, h, w), frame.image_hw
    if partial:
        name = min(partial)
        missing = int((~partial[name].filled).sum())
        raise CorruptFileError(f"{path}: frame {name!r} lacks {missing} of its {grid.n_patches} patches")
    absent = sorted(wanted - done)
    if absent:
        raise CorruptFileError(f"{path}: {len(absent)} manifest frame(s) have no features, first {absent[0]!r}")
