"""Feature files: exact round trips, provenance, atomic writes, corrupt-file errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vitlocal.errors import ConfigError, CorruptFileError
from vitlocal.features import store
from vitlocal.features.store import (
    FeatureWriter,
    cls_path,
    read_attrs,
    read_cls,
    read_features,
    write_features,
)

ATTRS = {
    "model": "dino",
    "arch": "vit_base_patch16_224",
    "weights": "random(seed=0)",
    "variant": "clean",
    "dataset": "cityscapes",
    "split": "train",
    "preset": "demo",
    "patch_labels": "nearest_exact",
    "seed": 0,
}
GRID = (2, 3)


def patches(sample: str, n_tiles: int, rng: np.random.Generator) -> pd.DataFrame:
    tile, row, col = (a.reshape(-1) for a in np.indices((n_tiles, *GRID)))
    n = tile.size
    return pd.DataFrame(
        {
            "sample_id": [sample] * n,
            "tile_id": tile,
            "patch_row": row,
            "patch_col": col,
            "label": rng.integers(0, 256, n),
            "image_h": 64,
            "image_w": 96,
            "track_id": rng.integers(-5, 5, n),
        }
    )


def batch(sample: str, n_tiles: int, seed: int, dims=(("12", 8), ("3", 5))):
    rng = np.random.default_rng(seed)
    meta = patches(sample, n_tiles, rng)
    emb = {int(k): rng.standard_normal((len(meta), c)).astype(np.float32) * 10 for k, c in dims}
    cls = {int(k): rng.standard_normal((n_tiles, c)).astype(np.float32) for k, c in dims}
    return meta, emb, cls


def test_float32_round_trip_is_exact(tmp_path):
    meta, emb, cls = batch("a", 3, seed=0)
    path = tmp_path / "f.parquet"
    write_features(path, meta, emb, cls, ATTRS, dtype="float32")

    got_meta, got = read_features(path)
    assert sorted(got) == [3, 12]
    for layer in emb:
        assert got[layer].dtype == np.float32 and got[layer].flags.c_contiguous
        np.testing.assert_array_equal(got[layer], emb[layer])
    assert list(got_meta.columns) == list(meta.columns)
    assert got_meta["sample_id"].tolist() == meta["sample_id"].tolist()
    for column in meta.columns.drop("sample_id"):
        np.testing.assert_array_equal(got_meta[column].to_numpy(), meta[column].to_numpy())
    assert got_meta.dtypes.drop("sample_id").to_dict() == {
        "tile_id": np.int16,
        "patch_row": np.int16,
        "patch_col": np.int16,
        "label": np.uint8,
        "image_h": np.int32,
        "image_w": np.int32,
        "track_id": np.int64,
    }


def test_float16_stores_the_rounded_values(tmp_path):
    meta, emb, cls = batch("a", 2, seed=1)
    path = tmp_path / "f.parquet"
    write_features(path, meta, emb, cls, ATTRS)
    _, got = read_features(path, layers=[12])
    assert list(got) == [12] and got[12].dtype == np.float16
    np.testing.assert_array_equal(got[12], emb[12].astype(np.float16))
    # float16 keeps ~3 significant digits: relative error <= 2**-11
    np.testing.assert_allclose(got[12].astype(np.float32), emb[12], rtol=2**-11, atol=2**-24)


def test_cls_aligned_with_tiles(tmp_path):
    meta, emb, cls = batch("a", 4, seed=2)
    path = tmp_path / "f.parquet"
    write_features(path, meta, emb, cls, ATTRS, dtype="float32")
    tiles, got = read_cls(path, layers=[3])
    assert cls_path(path) == tmp_path / "f.cls.parquet"
    assert tiles["sample_id"].tolist() == ["a"] * 4 and tiles["tile_id"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(got[3], cls[3])


def test_attrs_record_provenance(tmp_path):
    meta, emb, cls = batch("a", 1, seed=3)
    path = tmp_path / "f.parquet"
    write_features(path, meta, emb, None, ATTRS)
    attrs = read_attrs(path)
    assert {k: attrs[k] for k in ATTRS} == ATTRS
    assert attrs["layers"] == [3, 12] and attrs["dims"] == {"3": 5, "12": 8}
    assert attrs["dtype"] == "float16" and attrs["n_patches"] == 6 and attrs["has_cls"] is False
    assert {"created", "vitlocal_version", "format_version"} <= attrs.keys()
    # plain Parquet readers see the same record
    assert json.loads(pq.read_metadata(path).metadata[b"vitlocal"]) == attrs
    with pytest.raises(ConfigError, match="no CLS tokens"):
        read_cls(path)


def test_streaming_writer_row_groups_equal_one_shot(tmp_path):
    batches = [batch(f"s{i}", n, seed=10 + i) for i, n in enumerate([3, 1, 4, 2])]
    path = tmp_path / "stream.parquet"
    # 52 bytes per row (8 + 5 float32 dims), 512-byte row groups: 9 rows each -> 7 groups for 60 rows
    with FeatureWriter(path, ATTRS, dtype="float32", row_group_mb=2**-11) as writer:
        for meta, emb, cls in batches:
            writer.write(meta, emb, cls)
    assert pq.ParquetFile(path).num_row_groups == 7
    meta, got = read_features(path, columns=["sample_id", "tile_id", "label"])
    assert list(meta.columns) == ["sample_id", "tile_id", "label"]
    want = pd.concat([m for m, _, _ in batches], ignore_index=True)
    assert meta["sample_id"].tolist() == want["sample_id"].tolist()
    np.testing.assert_array_equal(meta["label"], want["label"])
    for layer in (3, 12):
        np.testing.assert_array_equal(got[layer], np.concatenate([e[layer] for _, e, _ in batches]))
    tiles, got_cls = read_cls(path)
    assert tiles.groupby("sample_id", sort=False).size().tolist() == [3, 1, 4, 2]
    np.testing.assert_array_equal(got_cls[12], np.concatenate([c[12] for _, _, c in batches]))


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_wrong_row_count_leaves_no_file(tmp_path):
    meta, emb, cls = batch("a", 2, seed=4)
    emb[3] = emb[3][:-1]
    path = tmp_path / "f.parquet"
    with pytest.raises(ConfigError, match=r"layer 3 have shape \(11, 5\); expected \(12, C\)"):
        write_features(path, meta, emb, cls, ATTRS)
    assert leftovers(tmp_path) == []


def test_exception_midway_removes_temp_and_keeps_old_file(tmp_path):
    path = tmp_path / "f.parquet"
    old_meta, old_emb, old_cls = batch("old", 1, seed=5)
    write_features(path, old_meta, old_emb, old_cls, ATTRS)
    before = path.read_bytes()

    def batches():
        yield batch("a", 2, seed=6)
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        with FeatureWriter(path, ATTRS, row_group_mb=2**-12) as writer:
            for meta, emb, cls in batches():
                writer.write(meta, emb, cls)
    assert leftovers(tmp_path) == ["f.cls.parquet", "f.parquet"]
    assert path.read_bytes() == before


def test_rewrite_without_cls_drops_stale_sibling(tmp_path):
    path = tmp_path / "f.parquet"
    meta, emb, cls = batch("a", 1, seed=7)
    write_features(path, meta, emb, cls, ATTRS)
    write_features(path, meta, emb, None, ATTRS)
    assert leftovers(tmp_path) == ["f.parquet"]


def test_mismatched_cls_sibling_is_detected(tmp_path):
    path = tmp_path / "f.parquet"
    meta, emb, cls = batch("a", 1, seed=8)
    write_features(path, meta, emb, cls, ATTRS)
    stale = cls_path(path).read_bytes()
    write_features(path, meta, emb, cls, ATTRS)
    cls_path(path).write_bytes(stale)
    with pytest.raises(CorruptFileError, match="stale"):
        read_cls(path)


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "f.parquet"
    meta, emb, cls = batch("a", 2, seed=9)
    write_features(path, meta, emb, cls, ATTRS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="f.parquet"):
        read_features(path)


def test_foreign_parquet_is_rejected(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(CorruptFileError, match="other.parquet.*without vitlocal metadata"):
        read_attrs(path)


def test_missing_provenance_is_refused(tmp_path):
    meta, emb, cls = batch("a", 1, seed=11)
    attrs = {k: v for k, v in ATTRS.items() if k not in ("seed", "preset")}
    with pytest.raises(ConfigError, match=r"lack \['preset', 'seed'\]"):
        write_features(tmp_path / "f.parquet", meta, emb, cls, attrs)


def test_out_of_range_label_is_refused(tmp_path):
    meta, emb, cls = batch("a", 1, seed=12)
    meta.loc[0, "label"] = 256
    with pytest.raises(ConfigError, match="'label' does not fit uint8"):
        write_features(tmp_path / "f.parquet", meta, emb, cls, ATTRS)
    assert leftovers(tmp_path) == []


def test_unknown_layer_lists_available(tmp_path):
    path = tmp_path / "f.parquet"
    meta, emb, cls = batch("a", 1, seed=13)
    write_features(path, meta, emb, cls, ATTRS)
    with pytest.raises(ConfigError, match=r"no layer\(s\) \[7\]; the file has layers \[3, 12\]"):
        read_features(path, layers=[7])


def test_later_batches_are_cast_to_the_first_schema(tmp_path):
    path = tmp_path / "f.parquet"
    first, second, third = (batch(f"s{i}", 1, seed=20 + i) for i in range(3))
    second[0]["track_id"] = second[0]["track_id"].astype(np.int32)
    with FeatureWriter(path, ATTRS) as writer:
        writer.write(*first)
        writer.write(*second)
    meta, _ = read_features(path, layers=[], columns=["track_id"])
    assert meta["track_id"].dtype == np.int64
    np.testing.assert_array_equal(meta["track_id"], np.concatenate([first[0]["track_id"], second[0]["track_id"]]))

    with pytest.raises(ConfigError, match="differs from the first batch"):
        with FeatureWriter(tmp_path / "g.parquet", ATTRS) as writer:
            writer.write(*first)
            writer.write(third[0].drop(columns="track_id"), *third[1:])
    assert leftovers(tmp_path) == ["f.cls.parquet", "f.parquet"]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_all_finite_agrees_with_numpy_on_every_special_value(dtype):
    info = np.finfo(dtype)
    finite = np.array([0.0, -0.0, 1.0, -2.5, info.max, -info.max, info.tiny, info.smallest_subnormal], dtype=dtype)
    assert store.all_finite(finite) and store.all_finite(finite[:0])
    for bad in (np.inf, -np.inf, np.nan, -np.nan):
        values = np.repeat(finite, 3)
        values[7] = bad
        assert not store.all_finite(values) and not np.isfinite(values).all()
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**16 if dtype == "float16" else 2**32, 200_000, dtype=np.uint64)
    random = bits.astype(np.uint16 if dtype == "float16" else np.uint32).view(dtype)
    for chunk in np.array_split(random, 400):  # every bit pattern class, finite and not
        assert store.all_finite(chunk) == bool(np.isfinite(chunk).all())


def test_writer_refuses_values_that_overflow_the_stored_dtype(tmp_path):
    meta = pd.DataFrame({"sample_id": "s", "tile_id": [0, 0], "patch_row": [0, 0], "patch_col": [0, 1],
                         "label": [1, 2], "image_h": 16, "image_w": 32})
    with pytest.raises(ConfigError, match="layer 3 has non-finite values after casting to float16"):
        with FeatureWriter(tmp_path / "f.parquet", ATTRS, dtype="float16") as writer:
            writer.write(meta, {3: np.array([[1.0, 2.0], [7e4, 0.0]], np.float32)})  # 7e4 > float16's 65504
    assert not list(tmp_path.glob("f.parquet*"))
