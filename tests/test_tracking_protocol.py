"""Tracking protocol checks (issues 18 §2, 19 §2-3): ties, Table 5's files, bad input refused, settings.

Each test is written from the protocol (paper.md, the MOTChallenge / BDD100K
formats, the authors' ``argmax``), on hand-built cases whose answer is known.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from torchvision.ops import roi_align

from vitlocal import subsets
from vitlocal.datasets import bdd100k, cityscapes, mot17
from vitlocal.errors import CorruptFileError, LabelError
from vitlocal.evaluation.segmentation import EvalTarget, ProbeSettings, knn_result, labelled, load_split
from vitlocal.published import load_published, to_our_keys
from vitlocal.reproduction import COMPARED, compare
from vitlocal.models.extractor import build_extractor
from vitlocal.models.registry import MODELS, demo_variant
from vitlocal.studies.tracking import compute, full_vs_tile_models
from vitlocal.studies.tracking.compute import (
    TrackingSettings,
    cityscapes_full_vs_tile_rows,
    full_vs_tile_rows,
    tracking_rows,
)
from vitlocal.studies.tracking.matching import match_video
from vitlocal.studies.tracking.roi import roi_features
from vitlocal.synthetic import generate
from vitlocal.synthetic import mot17 as synth_mot
from vitlocal.tiling import TilingSpec

from conftest import PROJECT, write_planted_cityscapes
from test_tracking import FRAME, VIDEO, _bdd_root, _position_map, _scene_maps, _write_maps

SCHEMA = str(PROJECT / "schemas" / "config.schema.yaml")
SETTINGS = TrackingSettings(gaps=(1, 2), roi_size=7, metric="dot", device="cpu")


# --------------------------------------------------------------------------- ties


def test_ties_go_to_the_first_candidate_in_track_order():
    """The authors take ``argmax``: of equal scores, the first candidate (ours: frame, then track order) wins.

    Frame 2 holds tracks 0 and 1 with one and the same feature; the query at
    frame 1 has that feature too. Query track 0: track 0, first, wins (right);
    query track 1: track 0 wins again (wrong instance, right category).
    """
    e = np.eye(3)
    for query, right in ((0, 1), (1, 0)):
        objects = [(1, query, 0, e[0]), (2, 1, 0, e[0]), (2, 0, 0, e[0]), (2, 2, 1, e[2])]  # any input order
        frame, track, category = (np.array([o[i] for o in objects]) for i in range(3))
        x = torch.tensor(np.stack([o[3] for o in objects]), dtype=torch.float32)
        for metric in ("dot", "cosine", "l2"):
            counts = match_video(x, frame, track, category, [1], metric)
            assert counts.queries.tolist() == [1], metric
            assert counts.correct_instance.tolist() == [right], (query, metric)
            assert counts.correct_category.tolist() == [1], (query, metric)


# --------------------------------------------------------------------------- ROIAlign setting


def test_roi_aligned_is_a_setting_recorded_in_the_rows(tmp_path):
    fmap = torch.from_numpy(_position_map(6, 10))
    box = np.array([[1.0, 0.5, 4.5, 4.0]], np.float32)
    for aligned in (False, True):
        direct = roi_align(fmap[None], [torch.from_numpy(box)], 7, 1.0, -1, aligned).flatten(1)
        torch.testing.assert_close(roi_features(fmap, box, 7, aligned=aligned), direct)
    assert TrackingSettings.from_config({"tracking": {"gaps": [1], "roi_size": 7}}).aligned is False
    on = TrackingSettings.from_config({"tracking": {"gaps": [1, 2], "roi_size": 7, "roi_aligned": True},
                                       "device": "cpu"})
    assert on.aligned is True
    root = tmp_path / "bdd100k"
    manifest = _bdd_root(root)
    path = tmp_path / "f.parquet"
    _write_maps(path, _scene_maps(manifest), 3, 5)
    for settings in (SETTINGS, on):
        rows = tracking_rows("dino", path, manifest, experiment="tracking", dataset="bdd100k", root=root,
                             split="val", settings=settings)
        assert {json.loads(s)["aligned"] for s in rows["settings"]} == {settings.aligned}


# --------------------------------------------------------------------------- config


def test_schema_bounds_gaps_and_defaults_roi_aligned(paper_config, demo_config):
    for config in (paper_config, demo_config):
        validate(config, SCHEMA)
        assert config["tracking"]["roi_aligned"] is False
    assert paper_config["tracking_models"] == ["supervised", "dino", "dinov2", "mae", "simmim"]
    for gaps in ([0], [1, -2], []):
        config = copy.deepcopy(paper_config)
        config["tracking"]["gaps"] = gaps
        with pytest.raises(WorkflowError):
            validate(config, SCHEMA)


# --------------------------------------------------------------------------- Table 5: which files


def test_full_vs_tile_scores_each_mode_on_its_own_file(tmp_path):
    root = tmp_path / "bdd100k"
    manifest = _bdd_root(root)
    tiled, full = tmp_path / "tiled.parquet", tmp_path / "full.parquet"
    _write_maps(tiled, _scene_maps(manifest), 3, 5)
    # whole frames where every object looks alike but for a random part: other numbers
    rng = np.random.default_rng(0)
    _write_maps(full, {s: rng.random((4, 6, 10), dtype=np.float32) for s in manifest["sample_id"]}, 1, 1,
                variant="full")
    rows = full_vs_tile_rows("dino", {"tiled": tiled, "full": full}, manifest, dataset="bdd100k", root=root,
                             split="val", settings=SETTINGS)
    for mode, path, variant in (("tiled", tiled, "clean"), ("full", full, "full")):
        alone = tracking_rows("dino", path, manifest, experiment="tracking_full_vs_tile", dataset="bdd100k",
                              root=root, split="val", settings=SETTINGS, variant=variant, level_prefix=f"{mode}:")
        mine = rows[rows["level"].str.startswith(f"{mode}:")].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone)
    values = rows.set_index(["metric", "level"])["value"]
    assert values[("acc_same_instance", "tiled:delta=1")] != values[("acc_same_instance", "full:delta=1")]


TILING = TilingSpec(None, 4, 8)
GRID = (4, 4)
N_CLASSES = len(cityscapes.CLASSES)
LISTS = {"lists_dir": PROJECT / "config/subsets/cityscapes", "train_sets": {"set4": "training_set4.csv"},
         "val_set": "validation_set.csv"}


def _write_cityscapes(path, root, manifest, split: str, variant: str, shift: int, seed: int) -> None:
    """Patch features: 3 x one-hot(class + ``shift``) + noise; ``shift`` differs between variants."""
    attrs = {"model": "dino", "arch": "planted", "weights": "random", "variant": variant, "dataset": "cityscapes",
             "split": split, "preset": "test", "patch_labels": "nearest_exact", "seed": 0,
             "data_source": "synthetic", "grid": list(GRID),
             "tiling": {"resize_to": None, "rows": TILING.rows, "cols": TILING.cols, "out_size": [64, 64]}}
    rng = np.random.default_rng(seed)

    def features(label):
        x = rng.normal(0.0, 0.1, (len(label), N_CLASSES))
        keep = np.flatnonzero(label != 255)
        x[keep, (label[keep] + shift) % N_CLASSES] += 3.0
        return x

    write_planted_cityscapes(path, root, manifest, attrs, features, tiling=TILING, grid=GRID)


def test_cityscapes_full_rows_use_the_full_training_file(tmp_path):
    """Table 5's ``full`` rows: a probe trained on whole-image features, scored on whole-image val features."""
    root = generate("cityscapes", tmp_path / "cityscapes", size="tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the authors' lists are not in the synthetic data: seeded fallback
        train = subsets.select_subset("cityscapes", "set4", root=root, settings=LISTS, seed=0).head(6)
        val = subsets.select_subset("cityscapes", "val", root=root, settings=LISTS, seed=0)
    files = {}
    for mode, variant, shift in (("tiled", "clean", 0), ("full", "full", 5)):  # the modes embed classes apart
        files[mode] = {"train": tmp_path / f"train-{mode}.parquet", "val": tmp_path / f"val-{mode}.parquet"}
        _write_cityscapes(files[mode]["train"], root, train, "set4", variant, shift, seed=1)
        _write_cityscapes(files[mode]["val"], root, val, "val", variant, shift, seed=2)
    target = EvalTarget.load("cityscapes", root, val)
    probes = ProbeSettings(knn_metric="dot", linear={"epochs": 3, "batch_size": 1024, "lr": 0.05},
                           batchnorm_models=(), device="cpu")
    rows = cityscapes_full_vs_tile_rows("dino", {m: f["train"] for m, f in files.items()},
                                        {m: f["val"] for m, f in files.items()}, target=target, probes=probes)
    miou = rows[rows["class"] == "mean"].set_index(["probe", "level"])["value"]
    for mode in ("tiled", "full"):
        expected, _ = knn_result(labelled(load_split(files[mode]["train"])), load_split(files[mode]["val"]),
                                 target, probes)
        assert miou[("knn", mode)] == pytest.approx(expected.miou)
        assert miou[("knn", mode)] > 0.5 and miou[("linear", mode)] > 0.3  # each trained on its own mode
    assert set(rows["level"]) == {"tiled", "full"}
    assert {json.loads(s)["variant"] for s in rows[rows["level"] == "full"]["settings"]} == {"full"}


# --------------------------------------------------------------------------- bad input


def _bdd_video(root: Path, frames: list, video: str = VIDEO, size=FRAME) -> Path:
    """A BDD100K video of blank ``size`` images with the given frame objects as its label file."""
    for number in range(1, len(frames) + 1):
        image = root / "images/track/val" / video / f"{video}-{number:07d}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.zeros((*size, 3), np.uint8))
    path = root / f"labels/box_track_20/val/{video}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(frames))
    return path


def _label(tid: str, box, category: str = "car", crowd: bool = False) -> dict:
    return {"id": tid, "category": category, "attributes": {"crowd": crowd},
            "box2d": dict(zip(("x1", "y1", "x2", "y2"), map(float, box)))}


def _frame(number: int, labels, video: str = VIDEO) -> dict:
    return {"name": f"{video}-{number:07d}.jpg", "videoName": video, "frameIndex": number - 1, "labels": labels}


def test_bdd_boxes_entirely_outside_the_image_are_refused(tmp_path):
    h, w = FRAME
    partly = [-8, -4, 12, 30], [w - 10, h - 10, w + 40, h + 40]
    path = _bdd_video(tmp_path, [_frame(1, [_label("a", partly[0]), _label("b", partly[1])])])
    tracks = bdd100k.read_tracks(tmp_path, "val", VIDEO)  # partly outside: kept as written
    np.testing.assert_array_equal(tracks[["x1", "y1", "x2", "y2"]].to_numpy(), np.array(partly, float))
    for box in ([w, 0, w + 20, 10], [-30, 5, 0, 20], [5, h + 1, 20, h + 9], [5, -9, 20, 0]):
        _bdd_video(tmp_path, [_frame(1, [_label("a", partly[0])]), _frame(2, [_label("zz", box, crowd=True)])])
        with pytest.raises(LabelError, match=rf"{VIDEO}\.json: frame 2, track 'zz'.*entirely outside the "
                                             rf"{w}x{h} image"):
            bdd100k.read_tracks(tmp_path, "val", VIDEO)
    assert path.is_file()


def test_mot17_boxes_entirely_outside_the_seqinfo_frame_are_refused(tmp_path):
    seq = tmp_path / "train/MOT17-09-FRCNN"
    for n in (1, 2):
        image = seq / f"img1/{n:06d}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.zeros((90, 160, 3), np.uint8))
    (seq / "seqinfo.ini").write_text(synth_mot.seqinfo_text("MOT17-09-FRCNN", 30, 2, (90, 160)))
    (seq / "gt").mkdir()
    gt = seq / "gt/gt.txt"
    gt.write_text("1,1,-10,20,15,8,1,1,1\n2,1,150,80,30,30,1,1,1\n")  # partly outside: fine
    assert len(mot17.read_tracks(tmp_path, "train", "MOT17-09", synthetic=True)) == 2
    gt.write_text("1,1,-10,20,15,8,1,1,1\n2,7,160,20,30,30,0,8,1\n")
    with pytest.raises(LabelError, match=r"gt\.txt: frame 2, track '7'.*entirely outside the 160x90 image"):
        mot17.read_tracks(tmp_path, "train", "MOT17-09", synthetic=True)
    gt.write_text("\n")
    with pytest.raises(CorruptFileError, match=r"gt\.txt: no ground-truth rows"):
        mot17.read_tracks(tmp_path, "train", "MOT17-09", synthetic=True)


def test_bdd_empty_or_malformed_label_files_name_the_file(tmp_path):
    cases = [
        ([], "lists no frames"),
        ([_frame(1, []), _frame(2, None)], "none of its 2 frames has a box2d label"),
        ([_frame(1, {"id": "a"})], "frame 1: 'labels' must be a list of label objects"),
        ([_frame(1, ["car"])], "frame 1: 'labels' must be a list of label objects"),
        ([_frame(1, [{**_label("a", [1, 1, 9, 9]), "attributes": "crowd"}])], "'attributes' must be an object"),
        ([_frame(1, [{**_label("a", [1, 1, 9, 9]), "box2d": [1, 1, 9, 9]}])], "needs numeric x1, y1, x2, y2"),
    ]
    for i, (frames, message) in enumerate(cases):
        root = tmp_path / str(i)
        _bdd_video(root, frames)
        with pytest.raises(CorruptFileError, match=rf"{VIDEO}\.json: .*{message}"):
            bdd100k.read_tracks(root, "val", VIDEO)


def _official_mot17_09(root: Path) -> Path:
    """MOT17-09 at its released frame rate, length (525) and gt row count (5,325), tiny images."""
    seq = root / "train/MOT17-09-FRCNN"
    (seq / "img1").mkdir(parents=True)
    blank = cv2.imencode(".jpg", np.zeros((32, 48, 3), np.uint8))[1].tobytes()
    for n in range(1, 526):
        (seq / f"img1/{n:06d}.jpg").write_bytes(blank)
    (seq / "seqinfo.ini").write_text(synth_mot.seqinfo_text("MOT17-09-FRCNN", 30, 525, (32, 48)))
    lines = [f"{f},{t},{t},2,3,5,1,1,1" for t in range(1, 11) for f in range(1, 526)]
    lines += [f"{f},11,20,2,3,5,1,1,1" for f in range(1, 76)]
    (seq / "gt").mkdir()
    (seq / "gt/gt.txt").write_text("\n".join(lines) + "\n")
    return seq / "gt/gt.txt"


def test_mot17_gt_cut_at_a_line_boundary_is_refused(tmp_path):
    gt = _official_mot17_09(tmp_path)
    assert len(mot17.read_tracks(tmp_path, "train", "MOT17-09")) == 5325
    lines = gt.read_text().splitlines(keepends=True)
    gt.write_text("".join(lines[:-40]))  # a valid, shorter file
    with pytest.raises(CorruptFileError, match=r"gt\.txt: 5285 rows, the official MOT17-09 gt\.txt has 5325"):
        mot17.read_tracks(tmp_path, "train", "MOT17-09")
    assert len(mot17.read_tracks(tmp_path, "train", "MOT17-09", synthetic=True)) == 5285
    ini = gt.parents[1] / "seqinfo.ini"
    ini.write_text(ini.read_text().replace("frameRate=30", "frameRate=25"))
    with pytest.raises(CorruptFileError, match="frameRate=25, the official MOT17-09 has 30"):
        mot17.read_tracks(tmp_path, "train", "MOT17-09")


def test_synthetic_mot17_is_read_only_when_the_features_say_synthetic(tmp_path):
    """The demo writer reuses the official names at another length: the data source decides, not the files."""
    root = synth_mot.write(tmp_path / "MOT17", sequences=("MOT17-05",), n_frames=6, size=(90, 160), n_objects=4,
                           seed=1)
    manifest = mot17.select_subset(root)
    frames, empty = compute._frames("mot17", root, "train", manifest, synthetic=True)
    assert len(frames) == 6 and empty == []
    with pytest.raises(CorruptFileError, match="seqLength=6, the official MOT17-05 has 837"):
        compute._frames("mot17", root, "train", manifest)


def test_all_ignored_videos_are_counted_and_all_empty_is_an_error(tmp_path):
    root = tmp_path / "bdd100k"
    manifest = _bdd_root(root)
    crowd = "b0000002-00000001"
    _bdd_video(root, [_frame(n, [_label("x", [0, 0, 40, 40], crowd=True)], crowd) for n in (1, 2, 3)], crowd)
    extra = pd.DataFrame({"sample_id": [f"{crowd}-{n:07d}" for n in (1, 2, 3)], "video": crowd, "frame": [1, 2, 3],
                          "image_path": [f"images/track/val/{crowd}/{crowd}-{n:07d}.jpg" for n in (1, 2, 3)]})
    both = pd.concat([manifest, extra], ignore_index=True)
    maps = {**_scene_maps(manifest), **{s: np.zeros((4, 6, 10), np.float32) for s in extra["sample_id"]}}
    path = tmp_path / "f.parquet"
    _write_maps(path, maps, 3, 5)
    rows = tracking_rows("dino", path, both, experiment="tracking", dataset="bdd100k", root=root, split="val",
                         settings=SETTINGS)
    record = json.loads(rows["settings"].iloc[0])
    assert (record["videos"], record["videos_without_objects"]) == (2, 1)
    only = tmp_path / "only.parquet"
    _write_maps(only, {s: maps[s] for s in extra["sample_id"]}, 3, 5)
    with pytest.raises(LabelError, match="nothing to score"):
        tracking_rows("dino", only, extra, experiment="tracking", dataset="bdd100k", root=root, split="val",
                      settings=SETTINGS)


def test_report_compares_every_published_tracking_curve(paper_config):
    """Fig 8's published curves (supervised, DINO, DINOv2, MAE, SimMIM) are all run and compared."""
    published = load_published()
    curves = to_our_keys(published[published["experiment"] == "tracking"])
    assert set(curves["model"]) <= set(paper_config["tracking_models"])
    ours = pd.DataFrame([{"experiment": "tracking", "dataset": "bdd100k", "model": model, "probe": "none",
                          "layer": None, "level": "delta=1", "class": "all", "metric": "acc_same_instance",
                          "value": 0.5, "preset": "paper", "weights": "official", "knn_metric": "dot",
                          "patch_labels": "nearest_exact", "data": "official"}
                         for model in paper_config["tracking_models"]])
    ours["layer"] = pd.array(ours["layer"], dtype="Int64")
    result = compare(ours, published)
    assert set(result.loc[result["status"] == COMPARED, "model"]) == set(curves["model"])


def test_whole_frame_models_take_a_whole_frame(paper_config):
    """Table 5's tracking models get features of whole (non-square, non-native) frames."""
    models = full_vs_tile_models(paper_config)
    assert models == ["dino", "dinov2", "mae"]
    for key in models:
        spec = demo_variant(MODELS[key], depth=1)
        ext = build_extractor(spec, PROJECT / "no-weights", dynamic_img_size=True)
        p = spec.patch_size
        patch, _ = ext.forward_layers(torch.zeros(1, 3, 3 * p, 5 * p), [1])
        assert patch[1].shape[1] == 15
