"""read_features' direct page reader: same arrays as Arrow's decoder, whatever wrote the file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vitlocal.errors import CorruptFileError
from vitlocal.features import store
from vitlocal.features.store import FeatureWriter, blob_rows, read_features

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
DIMS = {1: 96, 12: 40}


def write_batches(path, dtype: str, n_batches: int = 5, rows: int = 700, row_group_mb: float = 0.1) -> dict:
    """Several row groups, several pages per chunk, a short last page; returns the expected arrays."""
    rng = np.random.default_rng(0)
    expected = {layer: [] for layer in DIMS}
    with FeatureWriter(path, ATTRS, dtype=dtype, row_group_mb=row_group_mb) as writer:
        for b in range(n_batches):
            meta = pd.DataFrame(
                {
                    "sample_id": f"s{b}",
                    "tile_id": np.arange(rows) // 6,
                    "patch_row": np.arange(rows) % 6 // 3,
                    "patch_col": np.arange(rows) % 3,
                    "label": rng.integers(0, 19, rows),
                    "image_h": 64,
                    "image_w": 96,
                }
            )
            emb = {layer: rng.standard_normal((rows, dim)).astype(dtype) for layer, dim in DIMS.items()}
            writer.write(meta, emb)
            for layer in DIMS:
                expected[layer].append(emb[layer])
    return {layer: np.concatenate(parts) for layer, parts in expected.items()}


def arrow_decoded(path) -> dict[int, np.ndarray]:
    """Reference: every layer column decoded by Arrow."""
    table = pq.read_table(path)
    out = {}
    for layer in DIMS:
        field = table.schema.field(f"layer_{layer}").metadata
        dtype, dim = field[b"vitlocal.dtype"].decode(), int(field[b"vitlocal.dim"])
        out[layer] = blob_rows(table.column(f"layer_{layer}").combine_chunks(), dtype, dim)
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_direct_read_equals_arrow_and_never_falls_back(tmp_path, monkeypatch, dtype):
    path = tmp_path / "f.parquet"
    expected = write_batches(path, dtype)
    assert pq.ParquetFile(path).metadata.num_row_groups > 2
    monkeypatch.setattr(store, "blob_rows", lambda *a: pytest.fail("fell back to Arrow's decoder"))
    meta, got = read_features(path)
    reference = arrow_decoded(path)
    for layer in DIMS:
        assert got[layer].dtype == np.dtype(dtype) and got[layer].flags.c_contiguous
        np.testing.assert_array_equal(got[layer], expected[layer])
        np.testing.assert_array_equal(got[layer], reference[layer])
    assert len(meta) == len(expected[1]) and list(meta["sample_id"].unique()) == [f"s{b}" for b in range(5)]


@pytest.mark.parametrize(
    ("how", "direct"),
    [
        ({"data_page_version": "2.0"}, True),
        ({"data_page_size": 1000}, True),
        ({"compression": "zstd"}, False),
        ({"use_dictionary": True}, False),
        ({"nullable": True}, False),
    ],
    ids=["page-v2", "small-pages", "zstd", "dictionary", "nullable"],
)
def test_files_written_otherwise_read_the_same(tmp_path, monkeypatch, how, direct):
    """Another writer's encodings: the direct path takes what it recognises, Arrow decodes the rest."""
    path, other = tmp_path / "f.parquet", tmp_path / "other.parquet"
    expected = write_batches(path, "float16", n_batches=2)
    table = pq.read_table(path).replace_schema_metadata(pq.read_metadata(path).metadata)
    how = dict(how)
    if how.pop("nullable", False):
        table = table.cast(pa.schema([f.with_nullable(True) for f in table.schema], metadata=table.schema.metadata))
    pq.write_table(table, other, row_group_size=500, **{"compression": "none", "use_dictionary": False, **how})
    decoded = []
    monkeypatch.setattr(store, "blob_rows", lambda *a: decoded.append(a) or blob_rows(*a))
    _, got = read_features(other)
    for layer in DIMS:
        np.testing.assert_array_equal(got[layer], expected[layer])
    assert (not decoded) == direct


def test_corrupt_page_header_is_a_corrupt_file(tmp_path):
    path = tmp_path / "f.parquet"
    write_batches(path, "float16", n_batches=2)
    pf = pq.ParquetFile(path)
    chunk = pf.metadata.row_group(0).column(pf.schema_arrow.names.index("layer_1"))
    data = bytearray(path.read_bytes())
    # Zero the first page header of a layer chunk: neither reader can parse it.
    data[chunk.data_page_offset : chunk.data_page_offset + 8] = bytes(8)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="f.parquet"):
        read_features(path)


def test_iter_features_yields_each_row_group_as_read_features_would(tmp_path):
    path = tmp_path / "f.parquet"
    expected = write_batches(path, "float16")
    n_groups = pq.ParquetFile(path).metadata.num_row_groups
    parts = list(store.iter_features(path, [12], columns=["sample_id", "tile_id"]))
    assert len(parts) == n_groups > 2
    assert all(list(layers) == [12] and list(meta.columns) == ["sample_id", "tile_id"] for meta, layers in parts)
    np.testing.assert_array_equal(np.concatenate([layers[12] for _, layers in parts]), expected[12])
    whole, _ = read_features(path, [])
    pd.testing.assert_frame_equal(pd.concat([meta for meta, _ in parts], ignore_index=True),
                                  whole[["sample_id", "tile_id"]])
