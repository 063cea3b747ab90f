"""Stage-1 ``.npz`` files: written atomically and byte-reproducibly, read with errors naming the file, gathered.

Torch-free on purpose: the gather job (``rules/dvt.smk::dvt_stage1``) only
concatenates its shards' arrays, and importing torch would be most of its time.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, CorruptFileError

log = logging.getLogger(__name__)
PathLike = str | os.PathLike
#: Arrays every stage-1 ``.npz`` (shard or gathered) holds, besides ``attrs``.
TILE_ARRAYS = ("raw", "denoised", "artifact", "dataset", "sample_id", "tile_id", "loss", "seconds_views",
               "seconds_fit")
def write_npz(path: PathLike, arrays: Mapping[str, Any]) -> None:
    """``np.savez`` layout, written atomically with fixed zip timestamps (same arrays, same bytes).

    Leftover temporary files of an interrupted earlier write are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w",
                              force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
    os.replace(tmp, path)


def remove_leftovers(path: PathLike) -> None:
    """Temporary files of a killed save of ``path`` (``<name>.tmp-<pid>``, numpy's ``<stem>.tmp-<pid>.npz``)."""
    path = Path(path)
    for leftover in {*path.parent.glob(f"{path.name}.tmp-*"), *path.parent.glob(f"{path.stem}.tmp-*{path.suffix}")}:
        log.info("removing %s, left by an interrupted save", leftover)
        leftover.unlink(missing_ok=True)


def read_npz(path: PathLike) -> dict[str, Any]:
    """Every array of a stage-1 ``.npz`` and its parsed ``attrs``; unreadable files name the file and the cause."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
        out["attrs"] = json.loads(str(out["attrs"]))
    except FileNotFoundError:
        raise ConfigError(f"stage-1 file {path} does not exist") from None
    except KeyError as err:
        raise CorruptFileError(f"{path}: not a stage-1 file (no {err} array)") from err
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise CorruptFileError(f"{path}: cannot be read as a stage-1 .npz ({type(err).__name__}: {err})") from err
    missing = [k for k in TILE_ARRAYS if k not in out]
    if missing:
        raise CorruptFileError(f"{path}: not a stage-1 file (missing arrays {missing})")
    return out


def stack_tiles(parts: Sequence[Mapping[str, np.ndarray]], grid: Sequence[int], dim: int | None,
           size: int) -> dict[str, np.ndarray]:
    """The groups' (or shards') arrays end to end; empty arrays of the right shapes when there are none."""
    if parts:
        return {k: np.concatenate([p[k] for p in parts]) for k in ("index", *TILE_ARRAYS, "images")}
    gh, gw = (int(v) for v in grid)
    feature = np.zeros((0, gh, gw, dim or 0), np.float16)
    return {"index": np.zeros(0, np.int64), "raw": feature, "denoised": feature, "artifact": feature,
            "dataset": np.array([], dtype="<U1"), "sample_id": np.array([], dtype="<U1"),
            "tile_id": np.zeros(0, np.int64), "loss": np.zeros(0), "seconds_views": np.zeros(0),
            "seconds_fit": np.zeros(0), "images": np.zeros((0, size, size, 3), np.uint8)}


def gather_stage1(shard_paths: Sequence[PathLike], out_path: PathLike, *, model_key: str) -> dict[str, Any]:
    """One model's shards (in the order given: shard 0, 1, ...) -> its stage-1 ``.npz``; returns ``attrs``.

    Refuses a shard of another model or other settings, a missing or repeated
    tile; empty trailing shards (fewer tiles than planned) are counted and logged.
    """
    shards = [(Path(p), read_npz(p)) for p in shard_paths]
    if not shards:
        raise ConfigError(f"dvt stage 1 of {model_key}: no shards to gather into {out_path} (no training tiles: "
                          "dvt.stage1_subsets names no configured dataset)")
    volatile = ("first", "n_tiles", "device", "seconds_per_tile")
    head_path, head = shards[0]
    common = {k: v for k, v in head["attrs"].items() if k not in volatile}
    for path, data in shards:
        if data["attrs"].get("model") != model_key:
            raise ConfigError(f"{path} holds stage 1 of model {data['attrs'].get('model')!r}, gathered into "
                              f"{out_path} for model {model_key!r}")
        other = {k: v for k, v in data["attrs"].items() if k not in volatile}
        if other != common:
            changed = sorted(k for k in {*other, *common} if other.get(k) != common.get(k))
            raise ConfigError(f"{path} and {head_path} were made with different settings ({changed}): rerun both")
    arrays = stack_tiles([data for _, data in shards], common["grid"], None, 0)
    n = common["n_selected"]
    if arrays["index"].tolist() != list(range(n)):
        raise ConfigError(f"{out_path}: the shards {[str(p) for p, _ in shards]} do not hold global tiles "
                          f"0..{n - 1} once each, in order")
    if n == 0:
        raise ConfigError(f"dvt stage 1 for {model_key}: no training tiles selected (check dvt.stage1_tiles)")
    empty = [str(p) for p, data in shards if data["attrs"]["n_tiles"] == 0]
    if empty:
        log.warning("%s: %d tiles selected of the planned %d: %d empty shard(s) %s", model_key, n,
                    len(shards) * common["tiles_per_job"], len(empty), empty)
    seconds = arrays["seconds_views"] + arrays["seconds_fit"]
    devices = sorted({data["attrs"]["device"] for _, data in shards if data["attrs"]["n_tiles"]})
    attrs = {**common, "n_tiles": n, "empty_shards": len(empty), "device": ",".join(devices),
             "seconds_per_tile": float(seconds.mean())}
    arrays.pop("index")
    write_npz(out_path, {**arrays, "attrs": np.array(json.dumps(attrs))})
    log.info("%s: %d tiles from %d shards, %.2f s per tile (views %.2f + fit %.2f) -> %s", model_key, n,
             len(shards), attrs["seconds_per_tile"], arrays["seconds_views"].mean(), arrays["seconds_fit"].mean(),
             out_path)
    return attrs
