"""Tracking study: ROI features on the stitched patch grid, nearest-object accuracy, and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.ops import roi_align

from vitlocal.errors import CorruptFileError
from vitlocal.features.store import write_features
from vitlocal.studies.tracking import compute, figures, matching
from vitlocal.studies.tracking.compute import TrackingSettings, tracking_rows
from vitlocal.studies.tracking.matching import match_video
from vitlocal.studies.tracking.roi import (
    FrameGrid,
    boxes_on_grid,
    iter_frames,
    roi_features,
)

PATCH = 16
FRAME = (96, 160)  # 3x5 tiles of 32 px, 2x2 patches of 16 px each: a 6x10 grid


def _attrs(rows: int, cols: int, grid: tuple[int, int], variant: str = "clean", **extra) -> dict:
    return {"model": "dino", "arch": "vit", "weights": "random(seed=0)", "variant": variant, "dataset": "bdd100k",
            "split": "val", "preset": "test", "patch_labels": "nearest_exact", "seed": 0, "data_source": "synthetic",
            "tiling": {"resize_to": list(FRAME), "rows": rows, "cols": cols, "out_size": [32, 32]},
            "grid": list(grid), **extra}


def _write_maps(path: Path, maps: dict[str, np.ndarray], rows: int, cols: int, image_hw=FRAME, *,
                shuffle: int | None = None, variant: str = "clean") -> None:
    """Write frame maps ``(C, H, W)`` as a feature file cut into ``rows x cols`` tiles (rows shuffled if asked)."""
    metas, vectors = [], []
    for sample, fmap in maps.items():
        _, h, w = fmap.shape
        gh, gw = h // rows, w // cols
        for tile in range(rows * cols):
            for r in range(gh):
                for q in range(gw):
                    y, x = (tile // cols) * gh + r, (tile % cols) * gw + q
                    metas.append((sample, tile, r, q, 0, *image_hw))
                    vectors.append(fmap[:, y, x])
    meta = pd.DataFrame(metas, columns=["sample_id", "tile_id", "patch_row", "patch_col", "label", "image_h", "image_w"])
    x = np.stack(vectors).astype(np.float32)
    if shuffle is not None:
        order = np.random.default_rng(shuffle).permutation(len(meta))
        meta, x = meta.iloc[order].reset_index(drop=True), x[order]
    write_features(path, meta, {12: x}, None, _attrs(rows, cols, (gh, gw), variant), dtype="float32")


def _position_map(h: int, w: int, offset: float = 0.0) -> np.ndarray:
    """Channels: grid row, grid column, a constant: every value says where (and in which frame) it is."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([rows, cols, np.full((h, w), offset, np.float32)])


# --------------------------------------------------------------------------- ROI features


BOXES = np.array([
    [20.0, 10.0, 50.0, 40.0],    # crosses the tile border at x = 32 and y = 32
    [100.0, 60.0, 160.0, 96.0],  # ends at the frame's right and bottom edges
    [-8.0, -4.0, 12.0, 30.0],    # starts outside the frame
    [33.0, 33.0, 63.0, 63.0],    # one whole interior tile
])


@pytest.mark.parametrize("rows,cols", [(3, 5), (1, 1)])  # tiled and whole-frame ("full") files
def test_roi_features_equal_a_direct_roi_align_on_the_frame_map(tmp_path, rows, cols):
    maps = {"f1": _position_map(6, 10, 1.0), "f2": _position_map(6, 10, 2.0)}
    path = tmp_path / "features.parquet"
    _write_maps(path, maps, rows, cols, shuffle=3)
    got = {sample: (fmap, hw) for sample, fmap, hw in iter_frames(path, ["f1", "f2"])}
    assert sorted(got) == ["f1", "f2"]
    for sample, (fmap, hw) in got.items():
        np.testing.assert_array_equal(fmap, maps[sample])  # tiles stitched back exactly
        assert hw == FRAME
        ours = roi_features(torch.from_numpy(fmap), boxes_on_grid(BOXES, hw, fmap.shape[1:]), 7)
        direct = roi_align(torch.from_numpy(maps[sample])[None], [torch.tensor(BOXES, dtype=torch.float32)],
                           output_size=7, spatial_scale=1 / PATCH).flatten(1)
        assert ours.shape == (len(BOXES), 3 * 49)
        torch.testing.assert_close(ours, direct, rtol=0, atol=1e-5)


def test_roi_of_a_linear_map_is_the_bin_centre():
    """Independent of torchvision: bilinear pooling of a position map gives each bin's centre (aligned=False)."""
    fmap = torch.from_numpy(_position_map(6, 10))
    box = np.array([[1.0, 0.5, 4.5, 4.0]])  # grid units, inside [0, H-1] x [0, W-1]
    pooled = roi_features(fmap, box, 7).view(3, 7, 7)
    centres_y = 0.5 + (np.arange(7) + 0.5) * 3.5 / 7
    centres_x = 1.0 + (np.arange(7) + 0.5) * 3.5 / 7
    np.testing.assert_allclose(pooled[0].numpy(), np.repeat(centres_y[:, None], 7, 1), atol=1e-5)
    np.testing.assert_allclose(pooled[1].numpy(), np.repeat(centres_x[None, :], 7, 0), atol=1e-5)


def test_boxes_scale_from_the_original_frame_to_the_grid():
    grid = boxes_on_grid(np.array([[0.0, 0.0, 1280.0, 720.0], [640, 360, 656, 376]]), (720, 1280), (42, 70))
    np.testing.assert_allclose(grid, [[0, 0, 70, 42], [35, 21, 35 + 16 * 70 / 1280, 21 + 16 * 42 / 720]])
    # paper setting: 672x1120 frames, 16-px patches -> the grid is the resized frame / 16
    resized = np.array([[100.0, 50.0, 300.0, 200.0]])
    original = resized * np.array([1280 / 1120, 720 / 672, 1280 / 1120, 720 / 672])
    np.testing.assert_allclose(boxes_on_grid(original, (720, 1280), (42, 70)), resized / 16)


def test_frame_grid_positions():
    grid = FrameGrid(3, 5, 14, 14)
    assert grid.shape == (42, 70)
    # tile 7 = row 1, col 2; its patch (3, 4) sits at grid (17, 32)
    assert int(grid.position(np.array([7]), np.array([3]), np.array([4]))[0]) == 17 * 70 + 32


def test_incomplete_or_repeated_frames_are_refused(tmp_path):
    path = tmp_path / "f.parquet"
    _write_maps(path, {"f1": _position_map(6, 10)}, 3, 5)
    with pytest.raises(CorruptFileError, match="'f0' .*have no features|no features, first 'f0'"):
        list(iter_frames(path, ["f0", "f1"]))
    with pytest.raises(CorruptFileError, match="'f1' is not in the manifest"):
        list(iter_frames(path, ["f2"]))


# --------------------------------------------------------------------------- matching


def _reference(features, frame, track, category, gaps, metric):
    """One object at a time: the definition written out, for comparison with the batched matcher."""
    x = features.double().numpy()
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = {}
    order = np.lexsort((track, frame))
    for gap in gaps:
        per_pair = {}
        for i in range(len(frame)):
            cands = [j for j in order if frame[j] == frame[i] + gap]
            if track[i] not in {track[j] for j in cands}:
                continue
            if metric == "l2":
                scores = [-np.sum((x[i] - x[j]) ** 2) for j in cands]
            else:
                scores = [x[i] @ x[j] for j in cands]
            best = cands[int(np.argmax(scores))]
            per_pair.setdefault(frame[i], []).append((track[best] == track[i], category[best] == category[i]))
        pairs = list(per_pair.values())
        out[gap] = (len(pairs), np.mean([np.mean([a for a, _ in p]) for p in pairs]) if pairs else np.nan,
                    np.mean([np.mean([b for _, b in p]) for p in pairs]) if pairs else np.nan)
    return out


@pytest.mark.parametrize("metric", ["dot", "cosine", "l2"])
def test_batched_matching_equals_the_per_object_definition(monkeypatch, metric):
    monkeypatch.setattr(matching, "CHUNK_FRAMES", 3)  # several chunks and both residues
    rng = np.random.default_rng(7)
    frames, tracks = [], []
    for t in range(5, 30):  # frames need not start at 1; tracks appear and leave
        alive = np.flatnonzero(rng.random(9) < 0.6)
        frames += [t] * len(alive)
        tracks += alive.tolist()
    frame, track = np.array(frames), np.array(tracks)
    category = track % 3
    base = rng.standard_normal((9, 20))
    features = torch.tensor(base[track] + 0.8 * rng.standard_normal((len(track), 20)), dtype=torch.float32)
    shuffle = rng.permutation(len(track))  # input order must not matter
    gaps = [1, 3, 5, 9]
    counts = match_video(features[shuffle], frame[shuffle], track[shuffle], category[shuffle], gaps, metric)
    expected = _reference(features, frame, track, category, gaps, metric)
    for i, gap in enumerate(gaps):
        n_pairs, inst, cat = expected[gap]
        assert counts.pairs[i] == n_pairs
        assert counts.accuracy("instance")[i] == pytest.approx(inst)
        assert counts.accuracy("category")[i] == pytest.approx(cat)
    assert 0 < counts.accuracy("instance").min() < 1  # the case is not trivial


def test_hand_made_tracks_dot_vs_l2():
    """A is identical along its track; C (same category) at frame 3 is 2·A, so the raw dot product prefers C."""
    a, p = np.eye(4)[0], np.eye(4)[1]
    objects = [  # frame, track, category, feature
        (1, 0, 0, a), (1, 1, 1, p),
        (2, 0, 0, a), (2, 1, 1, p),
        (3, 0, 0, a), (3, 2, 0, 2 * a),  # P has left the frame
    ]
    frame, track, category = (np.array([o[i] for o in objects]) for i in range(3))
    x = torch.tensor(np.stack([o[3] for o in objects]), dtype=torch.float32)
    dot = match_video(x, frame, track, category, [1, 2], "dot")
    np.testing.assert_array_equal(dot.pairs, [2, 1])
    np.testing.assert_allclose(dot.accuracy("instance"), [0.5, 0.0])  # pair (1,2): 1; pair (2,3): C wins
    np.testing.assert_allclose(dot.accuracy("category"), [1.0, 1.0])
    np.testing.assert_allclose(dot.accuracy("instance", "queries"), [2 / 3, 0.0])
    np.testing.assert_array_equal(dot.queries, [3, 1])  # P is no query towards frame 3
    l2 = match_video(x, frame, track, category, [1, 2], "l2")
    np.testing.assert_allclose(l2.accuracy("instance"), [1.0, 1.0])


# --------------------------------------------------------------------------- whole experiment on a BDD100K root


VIDEO = "b0000001-00000001"
#: per frame: (track id, category, crowd, grid x1, grid x2, feature)
SCENE = {
    1: [("A", "car", False, 0.5, 2.0, [1, 0, 0, 0]), ("P", "pedestrian", False, 3.5, 5.0, [0, 1, 0, 0])],
    2: [("A", "car", False, 0.5, 2.0, [1, 0, 0, 0]), ("P", "pedestrian", False, 3.5, 5.0, [0, 1, 0, 0]),
        ("X", "car", True, 6.5, 8.5, [3, 0, 0, 0])],  # a crowd box: it would win A's query, but is ignored
    3: [("A", "car", False, 0.5, 2.0, [1, 0, 0, 0]), ("C", "car", False, 6.5, 8.5, [2, 0, 0, 0])],
}
REGIONS = {0.5: (0, 3), 3.5: (3, 6), 6.5: (6, 10)}  # grid columns each box's constant region covers


def _bdd_root(root: Path) -> pd.DataFrame:
    labels = []
    for number, objects in SCENE.items():
        name = f"{VIDEO}-{number:07d}.jpg"
        image = root / "images/track/val" / VIDEO / name
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.zeros((*FRAME, 3), np.uint8))
        labels.append({"name": name, "videoName": VIDEO, "frameIndex": number - 1, "labels": [
            {"id": tid, "category": cat, "attributes": {"occluded": False, "truncated": False, "crowd": crowd},
             "box2d": {"x1": x1 * PATCH, "y1": 0.5 * PATCH, "x2": x2 * PATCH, "y2": 4.5 * PATCH}}
            for tid, cat, crowd, x1, x2, _ in objects]})
    (root / "labels/box_track_20/val").mkdir(parents=True)
    (root / f"labels/box_track_20/val/{VIDEO}.json").write_text(json.dumps(labels))
    return pd.DataFrame({"sample_id": [f"{VIDEO}-{n:07d}" for n in SCENE], "video": VIDEO, "frame": list(SCENE),
                         "image_path": [f"images/track/val/{VIDEO}/{VIDEO}-{n:07d}.jpg" for n in SCENE]})


def _scene_maps(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    maps = {}
    for sample, number in zip(manifest["sample_id"], manifest["frame"]):
        fmap = np.zeros((4, 6, 10), np.float32)
        for *_, x1, _, feature in SCENE[number]:
            c0, c1 = REGIONS[x1]
            fmap[:, :, c0:c1] = np.asarray(feature, np.float32)[:, None, None]
        maps[sample] = fmap
    return maps


def test_tracking_rows_on_hand_made_tracks_ignore_crowds_and_not_depend_on_file_order(tmp_path, monkeypatch):
    monkeypatch.setattr(compute, "ROI_FRAMES", 2)  # frames of one video pooled in several batches
    root = tmp_path / "bdd100k"
    manifest = _bdd_root(root)
    settings = TrackingSettings(gaps=(1, 2), roi_size=7, metric="dot", device="cpu")
    tables = []
    for seed, order in ((None, manifest), (5, manifest.iloc[::-1])):  # file and manifest order reversed, rows shuffled
        path = tmp_path / f"features-{seed}.parquet"
        _write_maps(path, dict(reversed(_scene_maps(manifest).items())) if seed else _scene_maps(manifest), 3, 5,
                    shuffle=seed)
        tables.append(tracking_rows("dino", path, order.reset_index(drop=True), experiment="tracking",
                                    dataset="bdd100k", root=root, split="val", settings=settings))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    rows = tables[0].set_index(["metric", "level"])["value"]
    assert rows[("acc_same_instance", "delta=1")] == pytest.approx(0.5)  # (1,2): A and P right; (2,3): C beats A
    assert rows[("acc_same_instance", "delta=2")] == pytest.approx(0.0)
    assert rows[("acc_same_category", "delta=1")] == pytest.approx(1.0)
    assert rows[("acc_same_category", "delta=2")] == pytest.approx(1.0)
    first = tables[0].iloc[0]
    assert (first["experiment"], first["dataset"], first["probe"], first["class"], first["layer"]) == (
        "tracking", "bdd100k", "none", "all", 12)
    assert first["knn_metric"] == "dot" and first["data"] == "synthetic"
    record = json.loads(tables[0].set_index(["metric", "level"]).loc[("acc_same_instance", "delta=1"), "settings"])
    assert (record["n_pairs"], record["n_queries"], record["query_accuracy"]) == (2, 3, pytest.approx(2 / 3))
    assert (record["roi_size"], record["aligned"], record["average"]) == (7, False, "frame pairs")


def test_per_video_counts_give_the_rows(tmp_path):
    """The sidecar (``video_units``): per video and delta, the addends whose ratio is the row's accuracy."""
    root = tmp_path / "bdd100k"
    manifest = _bdd_root(root)
    _write_maps(tmp_path / "features.parquet", _scene_maps(manifest), 3, 5)
    units: list[pd.DataFrame] = []
    rows = tracking_rows("dino", tmp_path / "features.parquet", manifest, experiment="tracking", dataset="bdd100k",
                         root=root, split="val", settings=TrackingSettings(gaps=(1, 2), device="cpu"), units=units)
    table = pd.concat(units, ignore_index=True)
    assert set(table["unit"]) == {VIDEO} and set(table["level"]) == {"delta=1", "delta=2"}
    assert set(table["layer"]) == {12} and set(table["experiment"]) == {"tracking"}
    for r in rows.to_dict("records"):
        stat = table[table["level"] == r["level"]].set_index("stat")["value"]
        what = r["metric"].removeprefix("acc_same_")
        assert stat.get(f"pair_acc_{what}", 0.0) / stat["pairs"] == pytest.approx(r["value"]), r["level"]
        record = json.loads(r["settings"])
        assert (stat["pairs"], stat.get("queries", 0)) == (record["n_pairs"], record["n_queries"])


# --------------------------------------------------------------------------- figures


def _rows(experiment, dataset, levels, models=("dino", "mae")):
    out = []
    for model in models:
        for level in levels:
            for metric, value in (("acc_same_instance", 0.5), ("acc_same_category", 0.9)):
                out.append({"experiment": experiment, "dataset": dataset, "model": model, "probe": "none",
                            "layer": 12, "level": level, "class": "all", "metric": metric,
                            "value": value + (0.1 if model == "dino" else 0) - 0.01 * int(level.split("=")[1]),
                            "preset": "demo", "weights": "random(seed=2)", "knn_metric": "dot",
                            "patch_labels": "nearest_exact", "data": "synthetic"})
    return pd.DataFrame(out)


def test_fig8_writes_the_numbers_it_plots_with_the_demo_banner(tmp_path):
    rows = _rows("tracking", "bdd100k", ["delta=1", "delta=3"])
    out = {s: tmp_path / f"fig8.{s}" for s in ("pdf", "png", "csv")}
    data = figures.fig8(rows, out["pdf"], out["png"], out["csv"])
    assert list(data["model"].unique()) == ["dino", "mae"]
    written = pd.read_csv(out["csv"])
    dino = written[(written["model"] == "dino") & (written["metric"] == "acc_same_instance")]
    assert dino["gap"].tolist() == [1, 3] and dino["value"].tolist() == pytest.approx([0.59, 0.57])
    assert out["png"].stat().st_size > 0 and out["pdf"].stat().st_size > 0


def test_table5_pairs_tiled_and_full(tmp_path):
    tracking = _rows("tracking_full_vs_tile", "bdd100k", ["tiled:delta=1", "full:delta=1", "tiled:delta=3",
                                                          "full:delta=3"], models=("dino",))
    tracking.loc[tracking["level"].str.startswith("full"), "value"] -= 0.2
    city = pd.DataFrame([{**tracking.iloc[0].to_dict(), "experiment": "cityscapes_full_vs_tile",
                          "dataset": "cityscapes", "probe": probe, "level": mode, "class": "mean", "metric": "miou",
                          "value": value} for probe, mode, value in
                         (("knn", "tiled", 0.3), ("knn", "full", 0.25), ("linear", "tiled", 0.4),
                          ("linear", "full", 0.38))])
    table = figures.table5(pd.concat([tracking, city]), tmp_path / "t.csv", tmp_path / "t.tex")
    row = table.set_index("model").loc["dino"]
    assert row["cityscapes_knn_tiled"] == pytest.approx(0.3) and row["cityscapes_linear_full"] == pytest.approx(0.38)
    assert row["tracking_delta1_tiled"] == pytest.approx(0.59) and row["tracking_delta1_full"] == pytest.approx(0.39)
    assert row["tracking_mean_tiled"] == pytest.approx(0.58)
    assert "DEMO" in (tmp_path / "t.tex").read_text()
    fig = figures.fig12(pd.concat([tracking, city]), tmp_path / "f.pdf", tmp_path / "f.png", tmp_path / "f.csv")
    assert set(fig["part"]) == {"tracking", "cityscapes"}
