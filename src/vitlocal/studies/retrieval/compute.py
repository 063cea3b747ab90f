"""FAIR1M object-patch retrieval (Figs 6, 7, 11, Table 3): the numbers.

Queries are the object patches (label not background) of every transformed or
degraded crop; the gallery is every patch of every clean crop. Each query's
nearest gallery patch under the configured similarity (``probes.knn_metric``;
paper: raw dot product) falls in one category, first match wins:

``same_patch``
    the clean patch of the same crop that holds the query patch's centre
    mapped back through the transform (the ``source_patch`` column the
    extraction writes with ``features.degrade.patch_correspondence``);
``same_fine`` / ``same_super``
    a patch of the query's fine class / of another fine class of its super class;
``other_object``
    a patch of another super class;
``background``
    a background patch.

``upper_bound`` is the share of queries that have a same patch at all (a
transform can move a patch's centre out of the crop). Fig 7 repeats the
search with the query's own image masked out of the gallery, inside the
blockwise product (``nearest_patches``). The paper's "image" is the 224-px
crop (295 images of 196 patches): ``retrieval.exclude_own: crop`` (default)
masks the query's crop only; ``scene`` masks every crop cut from the same
FAIR1M scene (the manifest's ``image_path``).

Rows (``RESULT_COLUMNS``, probe ``none``, ``knn_metric`` the similarity):

- ``fair1m_retrieval`` / ``fair1m_retrieval_exclude_own``: level = variant
  (``rotate-5``), class = category, ``upper_bound`` (own image kept only) or
  ``queries``; metric ``count`` and ``share`` (of the queries).
- ``fair1m_rotation``: the published vocabulary for integer rotations: class
  ``all_nonbg``, ``count_same_patch``, ``count_same_finegrained_class``
  (same patch or same fine class) and ``count_same_supercategory`` (... or
  same super class): cumulative, as the authors counted; each also as
  ``share_*`` of ``count_queries`` (the report compares shares: the
  authors' denominator is fixed across rotations, ours is not).
- ``fair1m_stats`` (level empty): ``count_patches`` (class ``all``, the
  gallery), ``count_nonbg_query_patches`` (class ``all_nonbg``: the object
  patches of the clean crops; the authors' count, the same at every rotation),
  and per fine class ``count_object_patches`` and ``count_crops_selected``
  (Table 3); ``settings`` records the patch grid.

Each model's job also writes the rows of ``<model>-<m>`` (the top-``m``
variance dimensions, ranked on the clean gallery, removed from gallery and
queries) for the models of ``retrieval.removed_models``; ``m`` must leave
dimensions (``0 < m < C``, the rule of ``scene.removed_dims`` too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from vitlocal.datasets import fair1m
from vitlocal.errors import ConfigError, LabelError
from vitlocal.evaluation.segmentation import RESULT_COLUMNS, provenance, resolve_device
from vitlocal.evaluation.units import unit_frame
from vitlocal.features.store import read_attrs, read_features
from vitlocal.probes.knn import METRICS, auto_block_size, shared_tensor
from vitlocal.probes.variance import feature_variance, remove_dims, top_variance_dims

from . import CATEGORIES, EXCLUDE_OWN, EXPERIMENT

log = logging.getLogger(__name__)

#: Published metric names of the cumulative counts (``fair1m_rotation``) -> categories they sum.
CUMULATIVE = {
    "count_same_patch": CATEGORIES[:1],
    "count_same_finegrained_class": CATEGORIES[:2],
    "count_same_supercategory": CATEGORIES[:3],
}
_SUPER = np.array([*fair1m.SUPERCLASS_INDEX, -1], dtype=np.int64)  # background (37) -> -1


#: What Fig 7 masks out of the gallery for a query (``retrieval.exclude_own``).
EXCLUDE_UNITS = ("crop", "scene")


# --------------------------------------------------------------------------- search


def nearest_patches(
    gallery_x: np.ndarray,
    query_x: np.ndarray,
    *,
    gallery_group: np.ndarray | None = None,
    query_group: np.ndarray | None = None,
    metric: str = "dot",
    block_size: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Index of each query's nearest gallery item; and, given groups, the nearest outside its own group.

    One blockwise pass serves both: each (query block x gallery block) score
    matrix gives its row maxima, then the pairs of the same group are set to
    ``-inf`` in place and it gives them again. Ties go to the lowest gallery
    index (as ``probes.knn.nearest_neighbors``) whatever ``block_size``; a
    query whose group covers the whole gallery gets ``-1``. Similarities as
    in ``probes.knn``: ``dot``, ``cosine`` (largest wins), ``l2`` (smallest).
    """
    if metric not in METRICS:
        raise ConfigError(f"similarity {metric!r} is unknown; expected one of {METRICS}")
    for name, x in (("gallery_x", gallery_x), ("query_x", query_x)):
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected a non-empty (n_items, n_dims)")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
    if gallery_x.shape[1] != query_x.shape[1]:
        raise ValueError(f"gallery has {gallery_x.shape[1]} dims but queries have {query_x.shape[1]}")
    grouped = gallery_group is not None or query_group is not None
    if grouped and (gallery_group is None or query_group is None
                    or len(gallery_group) != len(gallery_x) or len(query_group) != len(query_x)):
        raise ValueError("give one group per gallery row and one per query row, or neither")
    dev = resolve_device(device)
    if block_size is None:
        block_size = auto_block_size(gallery_x.shape[1], 1, dev, torch.float32)
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")

    def prepare(x: np.ndarray) -> torch.Tensor:
        t = shared_tensor(x).to(device=dev, dtype=torch.float32)
        return torch.nn.functional.normalize(t, dim=1) if metric == "cosine" else t

    n_query = len(query_x)
    nearest = np.empty(n_query, dtype=np.int64)
    outside = np.empty(n_query, dtype=np.int64) if grouped else None
    with torch.inference_mode():
        gallery = prepare(gallery_x)
        g_norm = (gallery * gallery).sum(dim=1) if metric == "l2" else None
        g_group = torch.as_tensor(np.asarray(gallery_group, dtype=np.int64), device=dev) if grouped else None
        for q0 in range(0, n_query, block_size):
            q = prepare(query_x[q0 : q0 + block_size])
            q_group = torch.as_tensor(np.asarray(query_group[q0 : q0 + len(q)], dtype=np.int64), device=dev) \
                if grouped else None
            best = [_Running(len(q), dev), _Running(len(q), dev)]
            for g0 in range(0, len(gallery), block_size):
                key = q @ gallery[g0 : g0 + block_size].T
                if g_norm is not None:  # 2 q.g - |g|^2: larger is nearer
                    key.mul_(2).sub_(g_norm[g0 : g0 + block_size])
                best[0].update(key, g0)
                if grouped:
                    key.masked_fill_(q_group[:, None] == g_group[None, g0 : g0 + block_size], -torch.inf)
                    best[1].update(key, g0)
                del key
            nearest[q0 : q0 + len(q)] = best[0].index.cpu().numpy()
            if grouped:
                outside[q0 : q0 + len(q)] = best[1].index.cpu().numpy()
    return nearest, outside


class _Running:
    """Running row maximum over gallery blocks; earlier blocks win ties (strict ``>``)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.value = torch.full((n,), -torch.inf, device=device)
        self.index = torch.full((n,), -1, dtype=torch.int64, device=device)

    def update(self, key: torch.Tensor, offset: int) -> None:
        value, index = key.max(dim=1)  # first maximum within the block
        better = value > self.value
        self.value = torch.where(better, value, self.value)
        self.index = torch.where(better, index + offset, self.index)


# --------------------------------------------------------------------------- categories


def categorise(
    nearest: np.ndarray,
    *,
    query_crop: np.ndarray,
    query_label: np.ndarray,
    query_source: np.ndarray,
    gallery_crop: np.ndarray,
    gallery_patch: np.ndarray,
    gallery_label: np.ndarray,
) -> np.ndarray:
    """Index into ``CATEGORIES`` of each query's nearest gallery patch (first matching category wins).

    ``query_source`` is the query's same patch (index in its crop's grid, -1
    if none); crops are integer ids shared by queries and gallery; labels are
    FAIR1M classes (0..36) or ``fair1m.BACKGROUND``.
    """
    nearest = np.asarray(nearest, dtype=np.int64)
    if (nearest < 0).any():
        raise ValueError(f"{int((nearest < 0).sum())} queries have no gallery candidate")
    for name, labels in (("query", query_label), ("gallery", gallery_label)):
        bad = sorted(set(np.unique(labels).tolist()) - set(range(fair1m.BACKGROUND + 1)))
        if bad:
            raise LabelError(f"{name} patch labels {bad[:5]} are not FAIR1M classes 0..{fair1m.BACKGROUND}")
    if (np.asarray(query_label) == fair1m.BACKGROUND).any():
        raise ValueError("queries must be object patches; background queries were given")
    found = np.asarray(gallery_label, dtype=np.int64)[nearest]
    query_source = np.asarray(query_source)
    same_patch = np.asarray(gallery_crop)[nearest] == query_crop
    same_patch &= (np.asarray(gallery_patch)[nearest] == query_source) & (query_source >= 0)
    query_label = np.asarray(query_label, dtype=np.int64)
    return np.select(
        [same_patch, found == query_label, _SUPER[found] == _SUPER[query_label], found != fair1m.BACKGROUND],
        [0, 1, 2, 3],
        default=4,
    ).astype(np.int8)


def category_counts(categories: np.ndarray) -> dict[str, int]:
    counts = np.bincount(np.asarray(categories, dtype=np.int64), minlength=len(CATEGORIES))
    return {name: int(c) for name, c in zip(CATEGORIES, counts)}


def upper_bound(query_source: np.ndarray) -> int:
    """Queries that have a same patch at all (their centre stays inside the clean crop)."""
    return int((np.asarray(query_source) >= 0).sum())


def crop_units(categories: np.ndarray, query_crop: np.ndarray, query_source: np.ndarray | None,
               crop_ids: list[str], **keys: Any) -> pd.DataFrame:
    """Sidecar rows of one search (``evaluation.units``): per crop (the unit), its queries' count per category,
    ``queries`` (written for every crop) and, given ``query_source``, ``upper_bound``; stat ``count``."""
    n, k = len(crop_ids), len(CATEGORIES)
    crop = np.asarray(query_crop, dtype=np.int64)
    values = [np.bincount(crop * k + np.asarray(categories, dtype=np.int64), minlength=n * k).reshape(n, k),
              np.bincount(crop, minlength=n)[:, None]]
    classes = [*CATEGORIES, "queries"]
    if query_source is not None:
        values.append(np.bincount(crop[np.asarray(query_source) >= 0], minlength=n)[:, None])
        classes.append("upper_bound")
    return unit_frame(keys, crop_ids, [(c, "count") for c in classes], np.hstack(values), total=k)


# --------------------------------------------------------------------------- data


class _Patches:
    """One feature file's features (one layer) with crop ids, in-crop patch index and labels.

    ``source=True``: a query file, reduced to its object patches, with their same patch.
    """

    def __init__(self, path: str, crop_of: Mapping[str, int], *, source: bool, layer: int | None = None) -> None:
        self.attrs = read_attrs(path)
        self.layer = int(layer if layer is not None else max(int(v) for v in self.attrs["layers"]))
        columns = ["sample_id", "tile_id", "patch_row", "patch_col", "label", *(["source_patch"] if source else [])]
        meta, layers = read_features(path, [self.layer], columns=columns)
        if (meta["tile_id"] != 0).any():
            raise ConfigError(f"{path}: FAIR1M crops are one tile each; found tile ids {sorted(set(meta['tile_id']))}")
        unknown = sorted(set(meta["sample_id"]) - set(crop_of))
        if unknown:
            raise ConfigError(f"{path}: crops {unknown[:3]} are not in the FAIR1M manifest")
        self.grid = (int(meta["patch_row"].max()) + 1, int(meta["patch_col"].max()) + 1)
        if len(meta) != len(set(meta["sample_id"])) * self.grid[0] * self.grid[1]:
            raise ConfigError(f"{path}: {len(meta)} patches is not a whole {self.grid[0]}x{self.grid[1]} grid "
                              f"per crop ({len(set(meta['sample_id']))} crops)")
        label = np.array(meta["label"], dtype=np.int64)
        # Queries keep only their object patches: a tenth of the file, for ~24 files at once.
        keep = label != fair1m.BACKGROUND if source else np.ones(len(label), dtype=bool)
        self.x = layers.pop(self.layer)[keep].astype(np.float32)
        self.crop = meta["sample_id"].map(crop_of).to_numpy(np.int64)[keep]
        self.patch = patch_index(meta["patch_row"].to_numpy(np.int64), meta["patch_col"].to_numpy(np.int64),
                                 self.grid)[keep]
        self.label = label[keep]
        self.source = meta["source_patch"].to_numpy(np.int64)[keep] if source else None
        self.path = path


def patch_index(row: np.ndarray, col: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Row-major index of patch ``(row, col)`` on a ``(rows, cols)`` grid: the ``source_patch`` convention."""
    return row * grid[1] + col


def removed_dims(m: int, n_dims: int, model: str) -> int:
    """``m``, refused unless ``0 < m < n_dims``: removing all dimensions leaves nothing to search.

    The same rule as ``scene.removed_dims``; a smaller model needs its own
    config value (the demo's 48-dim models: 12), never a silent change.
    """
    if not 0 < m < n_dims:
        raise ConfigError(f"retrieval.removed_dims = {m}: model {model!r} has {n_dims} dimensions; "
                          f"expected 0 < m < {n_dims}")
    return m


def ranked_dims(gallery_x: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` dimensions of largest variance over the clean gallery (never the queries: they are the test)."""
    return top_variance_dims(feature_variance(gallery_x), m)


# --------------------------------------------------------------------------- rows


def retrieval_rows(
    model: str,
    gallery_path: str,
    query_paths: Mapping[str, str],
    manifest: pd.DataFrame,
    *,
    metric: str = "dot",
    removed: int | None = None,
    exclude_own: str = "crop",
    block_size: int | None = None,
    device: str | None = "auto",
    units: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Every row of ``model`` (and of ``<model>-<m>`` when ``removed`` is ``m``): see the module docstring.

    ``query_paths``: variant name -> feature file; ``manifest``: the FAIR1M
    crop manifest (``sample_id``, ``image_path``, ``selected_for``);
    ``exclude_own`` (``crop`` or ``scene``): the unit Fig 7 masks out;
    ``units``: a list to append the per-crop counts of every search to (:func:`crop_units`).
    """
    if exclude_own not in EXCLUDE_UNITS:
        raise ConfigError(f"retrieval.exclude_own = {exclude_own!r}; expected one of {EXCLUDE_UNITS}")
    crop_of = {sid: i for i, sid in enumerate(manifest["sample_id"].astype(str))}
    # Fig 7's unit per crop id: the crop itself, or the FAIR1M scene it was cut from.
    own_unit = (np.arange(len(manifest), dtype=np.int64) if exclude_own == "crop"
                else pd.factorize(manifest["image_path"].astype(str))[0].astype(np.int64))
    gallery = _Patches(gallery_path, crop_of, source=False)
    if gallery.attrs.get("model") != model:
        raise ConfigError(f"{gallery_path} holds features of {gallery.attrs.get('model')!r}, not {model!r}")
    queries = {v: _Patches(p, crop_of, source=True, layer=gallery.layer) for v, p in query_paths.items()}
    for variant, q in queries.items():
        if q.x.shape[1] != gallery.x.shape[1] or q.grid != gallery.grid or q.attrs.get("model") != model:
            raise ConfigError(f"{q.path} ({variant}) does not match the clean gallery {gallery_path} "
                              f"(model, feature size or patch grid)")
    # The object patches of every variant, searched in one pass.
    query_x = np.concatenate([gallery.x[:0], *(q.x for q in queries.values())])
    query_crop = np.concatenate([gallery.crop[:0], *(q.crop for q in queries.values())])
    stats = {"grid": list(gallery.grid), **_omissions(manifest)}
    frames = [_with_provenance(_stats_rows(model, gallery, manifest), gallery, metric, stats)]
    models = [(model, None)]
    if removed is not None:
        m = removed_dims(removed, gallery.x.shape[1], model)
        models.append((f"{model}-{m}", ranked_dims(gallery.x, m)))
        frames.append(_with_provenance(_stats_rows(f"{model}-{m}", gallery, manifest), gallery, metric, stats))
    for name, dims in models:
        gallery_x = gallery.x if dims is None else remove_dims(gallery.x, dims)
        started = time.perf_counter()
        nearest = outside = np.empty(0, dtype=np.int64)
        if len(query_x):
            nearest, outside = nearest_patches(
                gallery_x, query_x if dims is None else remove_dims(query_x, dims),
                gallery_group=own_unit[gallery.crop], query_group=own_unit[query_crop],
                metric=metric, block_size=block_size, device=device)
        log.info("%s: search of %d queries x %d gallery patches (%d dims, %s) took %.2f s", name, len(query_x),
                 len(gallery_x), gallery_x.shape[1], metric, time.perf_counter() - started)
        settings = {**stats, "metric": metric, "gallery_patches": len(gallery_x), "dims": gallery_x.shape[1],
                    "removed_dims": 0 if dims is None else len(dims), "exclude_own": exclude_own}
        start = 0
        for variant, q in queries.items():
            chosen = slice(start, start + len(q.label))
            start += len(q.label)
            common = {"query_crop": q.crop, "query_label": q.label, "query_source": q.source,
                      "gallery_crop": gallery.crop, "gallery_patch": gallery.patch, "gallery_label": gallery.label}
            categories = {EXPERIMENT: categorise(nearest[chosen], **common),
                          EXCLUDE_OWN: categorise(_checked(outside[chosen], exclude_own), **common)}
            found = {experiment: category_counts(c) for experiment, c in categories.items()}
            for experiment, c in categories.items():
                if units is not None:
                    units.append(crop_units(c, q.crop, q.source if experiment == EXPERIMENT else None,
                                            list(manifest["sample_id"].astype(str)), experiment=experiment,
                                            model=name, probe="none", layer=gallery.layer, level=variant))
            rows = _variant_rows(name, variant, len(q.label), upper_bound(q.source), found)
            frames.append(_with_provenance(rows, gallery, metric, settings))
    return pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)]


def _omissions(manifest: pd.DataFrame) -> dict[str, int]:
    """The counted omissions of the subset, recorded in every row (``fair1m`` module docstring)."""
    if "dropped_boxes" not in manifest.columns:
        raise ConfigError("the FAIR1M manifest has no dropped_boxes column: it predates the count of zero-area "
                          "boxes; delete it so that the subset rule writes it again")
    return {"dropped_boxes": int(manifest["dropped_boxes"].sum())}


def _checked(outside: np.ndarray, unit: str) -> np.ndarray:
    if (outside < 0).any():
        raise ConfigError(f"excluding the query's own {unit} left no gallery patch for some queries: "
                          f"the FAIR1M subset needs at least two {unit}s")
    return outside


def _variant_rows(model: str, variant: str, n: int, bound: int, found: Mapping[str, dict[str, int]]) -> pd.DataFrame:
    rows = []
    for experiment, counts in found.items():
        classes = {**counts, "queries": n, **({"upper_bound": bound} if experiment == EXPERIMENT else {})}
        for cls, count in classes.items():
            rows.append({"experiment": experiment, "model": model, "level": variant, "class": cls,
                         "metric": "count", "value": float(count)})
            if cls != "queries":
                rows.append({"experiment": experiment, "model": model, "level": variant, "class": cls,
                             "metric": "share", "value": count / n if n else float("nan")})
        if experiment == EXPERIMENT and variant.startswith("rotate-") and float(variant[7:]).is_integer():
            # The published rows (rotate-5 ... rotate-20); their level regex takes whole degrees only.
            level = f"rotate-{int(float(variant[7:]))}"
            common = {"experiment": "fair1m_rotation", "model": model, "level": level, "class": "all_nonbg"}
            rows.append({**common, "metric": "count_queries", "value": float(n)})
            for metric, parts in CUMULATIVE.items():
                count = sum(counts[c] for c in parts)
                rows.append({**common, "metric": metric, "value": float(count)})
                rows.append({**common, "metric": "share" + metric[len("count"):],
                             "value": count / n if n else float("nan")})
    return pd.DataFrame(rows)


def _stats_rows(model: str, gallery: _Patches, manifest: pd.DataFrame) -> pd.DataFrame:
    """Table 3 and the published subset sizes, from the clean crops on this model's grid."""
    rows = [
        {"class": "all", "metric": "count_patches", "value": float(len(gallery.label))},
        {"class": "all_nonbg", "metric": "count_nonbg_query_patches",
         "value": float((gallery.label != fair1m.BACKGROUND).sum())},
    ]
    patches = np.bincount(gallery.label, minlength=fair1m.BACKGROUND + 1)
    crops = np.bincount(manifest["selected_for"].astype(int), minlength=len(fair1m.CLASSES))
    for index, name in enumerate(fair1m.CLASSES):
        rows.append({"class": name, "metric": "count_object_patches", "value": float(patches[index])})
        rows.append({"class": name, "metric": "count_crops_selected", "value": float(crops[index])})
    table = pd.DataFrame(rows)
    table["experiment"], table["model"], table["level"] = "fair1m_stats", model, ""
    return table


def _with_provenance(rows: pd.DataFrame, gallery: _Patches, metric: str, settings: Mapping[str, Any]) -> pd.DataFrame:
    rows = rows.copy()
    for key, value in provenance(gallery.attrs, probe="none", knn_metric="").items():
        rows[key] = value
    rows["dataset"], rows["probe"], rows["layer"] = "fair1m", "none", gallery.layer
    rows["knn_metric"] = metric  # the similarity of the search, though no k-NN probe is trained
    rows["settings"] = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))
    rows["layer"] = rows["layer"].astype("Int64")
    return rows


def search_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The similarity, block size and device of the search, from the workflow config."""
    section = config.get("retrieval", {})
    return {"metric": str(config.get("probes", {}).get("knn_metric", "dot")),
            "exclude_own": str(section.get("exclude_own", "crop")),
            "block_size": section.get("block_size"), "device": config.get("device", "auto")}


def removed_for(model: str, config: Mapping[str, Any]) -> int | None:
    """``retrieval.removed_dims`` for the models of ``retrieval.removed_models``, else None."""
    section = config.get("retrieval", {})
    return int(section.get("removed_dims", 200)) if model in section.get("removed_models", ()) else None


__all__ = ["CATEGORIES", "CUMULATIVE", "EXCLUDE_OWN", "EXCLUDE_UNITS", "EXPERIMENT", "categorise",
           "category_counts", "crop_units", "nearest_patches", "patch_index", "ranked_dims", "removed_dims", "removed_for",
           "retrieval_rows", "search_settings", "upper_bound"]

