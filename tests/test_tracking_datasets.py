"""BDD100K MOT / MOT17 readers against hand-written files and the synthetic generators."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from vitlocal.datasets import bdd100k, mot17
from vitlocal.datasets.tracking import TRACK_COLUMNS
from vitlocal.errors import ConfigError, CorruptFileError, DatasetNotFoundError, LabelError
from vitlocal.synthetic import _video
from vitlocal.synthetic import bdd100k as synth_bdd
from vitlocal.synthetic import mot17 as synth_mot

SIZE = (90, 160)


def _blank_jpeg(path: Path, size=SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((*size, 3), np.uint8))


def _table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(TRACK_COLUMNS)).astype({"frame": "int64", "ignore": bool})


# --------------------------------------------------------------------------- synthetic videos


def test_drawn_pixels_match_boxes_and_appearance_persists():
    rng = np.random.default_rng(5)
    frames = list(_video.synthesize(rng, synth_bdd.KINDS, synth_bdd.WEIGHTS, n_objects=8, n_frames=150, size=SIZE))
    checked = occluded = 0
    patches: dict[int, np.ndarray] = {}
    lifetimes: dict[int, list[int]] = {}
    for frame in frames:
        for box in frame.boxes:
            lifetimes.setdefault(box.track, []).append(frame.number)
            ys, xs = np.nonzero(frame.owner == box.track)
            assert len(ys) == box.visible_pixels
            fx1, fy1, fx2, fy2 = box.full
            assert box.visibility == pytest.approx(len(ys) / ((fx2 - fx1) * (fy2 - fy1)))
            if not len(ys):
                continue
            x1, y1, x2, y2 = box.clipped
            assert (x1 <= xs.min(), y1 <= ys.min(), xs.max() < x2, ys.max() < y2) == (True,) * 4
            if not box.occluded:
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box.clipped
                checked += 1
            occluded += box.occluded
            if not box.occluded and not box.truncated:  # whole texture visible: same pixels every frame
                patch = frame.image[y1:y2, x1:x2]
                assert np.array_equal(patches.setdefault(box.track, patch), patch)
    assert checked > 100 and occluded > 0
    assert any(min(f) > 1 for f in lifetimes.values()) and any(max(f) < 150 for f in lifetimes.values())
    again = list(_video.synthesize(np.random.default_rng(5), synth_bdd.KINDS, synth_bdd.WEIGHTS,
                                   n_objects=8, n_frames=150, size=SIZE))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again))


# --------------------------------------------------------------------------- BDD100K


def _expected_from_json(root: Path, video: str) -> pd.DataFrame:
    """The track table read straight from the JSON written (names give 1-based frames)."""
    rows = []
    for frame in json.loads((root / f"labels/box_track_20/val/{video}.json").read_text()):
        number = int(frame["name"][-11:-4])
        for label in frame["labels"]:
            attrs = {k.lower(): v for k, v in label["attributes"].items()}
            box = label["box2d"]
            rows.append([number, f"images/track/val/{video}/{frame['name']}", label["id"], label["category"],
                         box["x1"], box["y1"], box["x2"], box["y2"],
                         attrs["crowd"] or label["category"] in ("other person", "other vehicle", "trailer")])
    return _table(rows).sort_values(["frame", "track_id"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def bdd_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("bdd")
    return {
        style: synth_bdd.write(base / style / "bdd100k", n_videos=3, n_frames=10, size=SIZE,
                               n_objects=8, seed=3, key_style=style)
        for style in ("current", "2020")
    }


def test_bdd_reads_what_the_generator_wrote_in_both_spellings(bdd_roots):
    current, old = bdd_roots["current"], bdd_roots["2020"]
    first = json.loads(next((old / "labels/box_track_20/val").glob("*.json")).read_text())[0]
    assert "index" in first and "frameIndex" not in first
    assert set(first["labels"][0]["attributes"]) == {"Occluded", "Truncated", "Crowd"}
    videos = bdd100k.list_videos(current, "val")
    assert videos == bdd100k.list_videos(old, "val") == sorted(p.stem for p in (current / "labels/box_track_20/val").iterdir())
    n_ignored = 0
    for video in videos:
        tracks = bdd100k.read_tracks(current, "val", video)
        pd.testing.assert_frame_equal(tracks, _expected_from_json(current, video))
        pd.testing.assert_frame_equal(tracks, bdd100k.read_tracks(old, "val", video))
        assert tracks["track_id"].str.fullmatch(r"\d{8}").all()
        assert tracks["frame"].between(1, 10).all()
        n_ignored += tracks["ignore"].sum()
    assert n_ignored > 0


def test_bdd_pairs_frames_by_name_not_index(bdd_roots, tmp_path):
    root = tmp_path / "bdd100k"
    shutil.copytree(bdd_roots["current"], root)
    video = bdd100k.list_videos(root, "val")[0]
    expected = bdd100k.read_tracks(root, "val", video)
    path = root / f"labels/box_track_20/val/{video}.json"
    frames = json.loads(path.read_text())
    assert [f["frameIndex"] for f in frames] == list(range(10))  # 0-based, names from 0000001
    for f in frames:
        f["frameIndex"] += 1
    path.write_text(json.dumps(frames[::-1]))  # 1-based and out of order
    pd.testing.assert_frame_equal(bdd100k.read_tracks(root, "val", video), expected)


def test_bdd_hand_written_file(tmp_path):
    video = "b1c66a42-6f7d68ca"
    for n in (1, 2):
        _blank_jpeg(tmp_path / f"images/track/val/{video}/{video}-{n:07d}.jpg")
    frames = [
        {"name": f"{video}-0000002.jpg", "videoName": video, "index": 1, "labels": [
            {"id": "00000007", "category": "car", "attributes": {"Occluded": True, "Truncated": False, "Crowd": False},
             "box2d": {"x1": 10.5, "y1": 20.0, "x2": 30.25, "y2": 40.0}},
            {"id": "00000003", "category": "pedestrian", "attributes": {"Crowd": True},
             "box2d": {"x1": 1, "y1": 2, "x2": 3, "y2": 4}},
        ]},
        {"name": f"{video}-0000001.jpg", "videoName": video, "index": 0, "labels": [
            {"id": "00000009", "category": "trailer", "box2d": {"x1": 0, "y1": 0, "x2": 5, "y2": 6}},
            {"id": "00000008", "category": "car", "poly2d": []},
        ]},
    ]
    (tmp_path / "labels/box_track_20/val").mkdir(parents=True)
    (tmp_path / f"labels/box_track_20/val/{video}.json").write_text(json.dumps(frames))
    img = f"images/track/val/{video}/{video}-"
    expected = _table([
        [1, img + "0000001.jpg", "00000009", "trailer", 0.0, 0.0, 5.0, 6.0, True],
        [2, img + "0000002.jpg", "00000003", "pedestrian", 1.0, 2.0, 3.0, 4.0, True],
        [2, img + "0000002.jpg", "00000007", "car", 10.5, 20.0, 30.25, 40.0, False],
    ])
    pd.testing.assert_frame_equal(bdd100k.read_tracks(tmp_path, "val", video), expected)


def test_bdd_first_n_videos_in_sorted_order(bdd_roots):
    root = bdd_roots["current"]
    names = sorted(p.name for p in (root / "images/track/val").iterdir())
    manifest = bdd100k.select_subset(root, "val", n_videos=2)
    assert manifest["video"].unique().tolist() == names[:2]
    assert manifest["frame"].tolist() == list(range(1, 11)) * 2
    assert manifest["sample_id"].iloc[0] == f"{names[0]}-0000001"
    assert all((root / p).is_file() for p in manifest["image_path"])
    assert bdd100k.select_subset(root, "val", n_videos=None)["video"].nunique() == 3
    with pytest.raises(ConfigError, match="holds 3 videos"):
        bdd100k.select_subset(root, "val", n_videos=4)


def test_bdd_errors_name_the_file(bdd_roots, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="bdd-data.berkeley.edu"):
        bdd100k.list_videos(tmp_path / "nowhere", "val")
    root = tmp_path / "bdd100k"
    shutil.copytree(bdd_roots["current"], root)
    first, second, third = bdd100k.list_videos(root, "val")
    (root / f"images/track/val/{first}/{first}-0000004.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=f"{first}-0000004.jpg"):
        bdd100k.read_tracks(root, "val", first)
    (root / f"labels/box_track_20/val/{second}.json").write_text('[{"name": ')
    with pytest.raises(CorruptFileError, match=f"{second}.json"):
        bdd100k.read_tracks(root, "val", second)
    shutil.rmtree(root / f"images/track/val/{third}")
    with pytest.raises(DatasetNotFoundError, match=f"images/track/val/{third}"):
        bdd100k.list_videos(root, "val")


def test_bdd_writer_is_deterministic(bdd_roots, tmp_path):
    again = synth_bdd.write(tmp_path / "bdd100k", n_videos=3, n_frames=10, size=SIZE, n_objects=8, seed=3)
    for path in (bdd_roots["current"] / "labels/box_track_20/val").iterdir():
        assert path.read_bytes() == (again / "labels/box_track_20/val" / path.name).read_bytes()


# --------------------------------------------------------------------------- MOT17


@pytest.fixture(scope="module")
def mot_root(tmp_path_factory):
    return synth_mot.write(tmp_path_factory.mktemp("mot") / "MOT17", sequences=("MOT17-02", "MOT17-05"),
                           n_frames=10, size=SIZE, n_objects=10, seed=2)


def test_mot17_reads_the_gt_written(mot_root):
    assert mot17.list_sequences(mot_root) == ["MOT17-02", "MOT17-05"]
    classes_seen = set()
    for sequence in ("MOT17-02", "MOT17-05"):
        gt_file = mot_root / f"train/{sequence}-DPM/gt/gt.txt"
        gt = np.loadtxt(gt_file, delimiter=",")
        assert (np.diff(gt[:, 1]) >= 0).all()  # grouped by track
        gt = gt[np.lexsort((gt[:, 1].astype(int).astype(str), gt[:, 0]))]
        tracks = mot17.read_tracks(mot_root, "train", sequence, synthetic=True)
        assert tracks["frame"].tolist() == gt[:, 0].astype(int).tolist()
        assert tracks["track_id"].tolist() == [str(int(i)) for i in gt[:, 1]]
        np.testing.assert_array_equal(tracks[["x1", "y1"]].to_numpy(), gt[:, 2:4])
        np.testing.assert_array_equal(tracks[["x2", "y2"]].to_numpy(), gt[:, 2:4] + gt[:, 4:6])
        assert tracks["ignore"].tolist() == (~((gt[:, 7] == 1) & (gt[:, 6] == 1))).tolist()
        assert tracks["category"].tolist() == [mot17.CLASSES[int(c)] for c in gt[:, 7]]
        assert (tracks["image_path"] == [f"train/{sequence}-FRCNN/img1/{int(f):06d}.jpg" for f in gt[:, 0]]).all()
        classes_seen |= set(gt[:, 7].astype(int))
        assert ((gt[:, 7] == 1) & (gt[:, 6] == 1)).any() and (gt[:, 6] == 0).any()
    assert len(classes_seen) > 2


def test_mot17_consider_and_class_give_ignore(tmp_path):
    seq = tmp_path / "train/MOT17-09-SDP"
    for n in (1, 2):
        _blank_jpeg(seq / f"img1/{n:06d}.jpg")
    (seq / "seqinfo.ini").write_text(synth_mot.seqinfo_text("MOT17-09-SDP", 30, 2, SIZE))
    (seq / "gt").mkdir()
    (seq / "gt/gt.txt").write_text("1,1,10,20,5,8,1,1,1\n2,1,11,21,5,8,0,1,0.5\n1,2,-3,4,10,20,1,7,1\n2,3,0,0,4,4,0,3,0.25\n")
    img = "train/MOT17-09-SDP/img1/"
    expected = _table([
        [1, img + "000001.jpg", "1", "pedestrian", 10.0, 20.0, 15.0, 28.0, False],
        [1, img + "000001.jpg", "2", "static_person", -3.0, 4.0, 7.0, 24.0, True],
        [2, img + "000002.jpg", "1", "pedestrian", 11.0, 21.0, 16.0, 29.0, True],
        [2, img + "000002.jpg", "3", "car", 0.0, 0.0, 4.0, 4.0, True],
    ])
    pd.testing.assert_frame_equal(mot17.read_tracks(tmp_path, "train", "MOT17-09", synthetic=True), expected)


def test_mot17_uses_one_detector_copy(mot_root, tmp_path):
    copies = sorted(p.name for p in (mot_root / "train").iterdir())
    assert copies == [f"MOT17-{n}-{d}" for n in ("02", "05") for d in ("DPM", "FRCNN", "SDP")]
    ref = mot_root / "train/MOT17-05-DPM"
    for det in ("FRCNN", "SDP"):
        other = mot_root / f"train/MOT17-05-{det}"
        assert (other / "gt/gt.txt").read_bytes() == (ref / "gt/gt.txt").read_bytes()
        assert all((other / "img1" / p.name).read_bytes() == p.read_bytes() for p in (ref / "img1").iterdir())
        assert (other / "det/det.txt").read_bytes() != (ref / "det/det.txt").read_bytes()
    manifest = mot17.select_subset(mot_root)
    assert manifest.groupby("video")["frame"].apply(list).to_dict() == {s: list(range(1, 11)) for s in ("MOT17-02", "MOT17-05")}
    assert manifest["image_path"].str.contains("-FRCNN/").all()
    assert mot17.select_subset(mot_root, sequences=["MOT17-05"])["video"].unique().tolist() == ["MOT17-05"]
    without_frcnn = tmp_path / "MOT17"
    for det in ("SDP", "DPM"):
        shutil.copytree(mot_root / f"train/MOT17-02-{det}", without_frcnn / f"train/MOT17-02-{det}")
    assert mot17.sequence_dir(without_frcnn, "train", "MOT17-02").name == "MOT17-02-DPM"
    with pytest.raises(ConfigError, match="MOT17-04"):
        mot17.select_subset(mot_root, sequences=["MOT17-04"])


def test_mot17_seqinfo_is_consistent(mot_root, tmp_path):
    for sequence, fps in (("MOT17-02", 30), ("MOT17-05", 14)):
        seq_dir = mot_root / f"train/{sequence}-SDP"
        info = mot17.read_seqinfo(seq_dir / "seqinfo.ini")
        assert info == {"name": f"{sequence}-SDP", "imDir": "img1", "frameRate": fps, "seqLength": 10,
                        "imWidth": 160, "imHeight": 90, "imExt": ".jpg"}
        assert cv2.imread(str(seq_dir / "img1/000010.jpg")).shape == (90, 160, 3)
        assert len(list((seq_dir / "img1").iterdir())) == info["seqLength"]
    root = tmp_path / "MOT17"
    shutil.copytree(mot_root / "train/MOT17-02-FRCNN", root / "train/MOT17-02-FRCNN")
    ini = root / "train/MOT17-02-FRCNN/seqinfo.ini"
    ini.write_text(ini.read_text().replace("seqLength=10", "seqLength=12"))
    with pytest.raises(CorruptFileError, match=r"seqinfo\.ini: seqLength=12 .* holds 10"):
        mot17.read_tracks(root, "train", "MOT17-02", synthetic=True)
    ini.write_text(ini.read_text().replace("seqLength=12", "seqLength=10").replace("imWidth=160", "imWidth=1920"))
    with pytest.raises(CorruptFileError, match="1920x90 but .*000001.jpg is 160x90"):
        mot17.select_subset(root)
    ini.write_text(ini.read_text().replace("imWidth=1920\n", ""))
    with pytest.raises(CorruptFileError, match="lacks key 'imWidth'"):
        mot17.read_seqinfo(ini)


def test_mot17_errors_name_the_file(mot_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="motchallenge.net/data/MOT17"):
        mot17.list_sequences(tmp_path / "nowhere")
    root = tmp_path / "MOT17"
    shutil.copytree(mot_root / "train/MOT17-02-FRCNN", root / "train/MOT17-02-FRCNN")
    gt = root / "train/MOT17-02-FRCNN/gt/gt.txt"
    lines = gt.read_text().splitlines()
    lines[2] += ",-1"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptFileError, match=r"gt\.txt:3: 10 columns, expected 9"):
        mot17.read_tracks(root, "train", "MOT17-02", synthetic=True)
    gt.write_text("1,1,10,20,0,8,1,1,1\n")
    with pytest.raises(LabelError, match=r"gt\.txt: frame 1, track '1'.*x2 > x1"):
        mot17.read_tracks(root, "train", "MOT17-02", synthetic=True)
    gt.write_text("11,1,10,20,5,8,1,1,1\n")
    with pytest.raises(DatasetNotFoundError, match="000011.jpg"):
        mot17.read_tracks(root, "train", "MOT17-02", synthetic=True)
    shutil.rmtree(root / "train/MOT17-02-FRCNN/img1")
    with pytest.raises(DatasetNotFoundError, match="MOT17-02-FRCNN/img1"):
        mot17.read_tracks(root, "train", "MOT17-02", synthetic=True)
