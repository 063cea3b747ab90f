"""The work the paper preset asks for, counted from its config and the study registry (``bench/fullsize.py`` part 1).

Units per stage (``STAGES``): tiles through the ViT in ViT-B/16-224 FLOP
equivalents, megapixels decoded, 1-NN GFLOP, linear-probe sample-epochs,
tracking frames; the DVT stages come from ``bench/fullsize_dvt.py``.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fullsize_dvt import DVT_STAGES, dvt_file, dvt_planner, dvt_training  # noqa: E402

from vitlocal.datasets.cityscapes import read_subset_list  # noqa: E402
from vitlocal.features.sources import FULL, base_tiling, round_to_patch  # noqa: E402
from vitlocal.layout import Layout  # noqa: E402
from vitlocal.models.registry import ModelSpec, resolve  # noqa: E402
from vitlocal.studies import EXPERIMENTS, OUTPUTS  # noqa: E402
from vitlocal.studies.card import HELD_OUT_SHARE  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = "results/paper"

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = "results/paper"

# ---- sizes the code cannot know without the data ------------------------------------------------
#: Decoded image size (H, W) per dataset: datasets.md (Cityscapes 2048x1024 PNG, BDD100K 1280x720,
#: UC Merced / RESISC45 256x256); MOT17 mostly 1920x1080 (its seqinfo.ini); ADE20K and FAIR1M vary:
#: [assumption] ADE20K ~512x683 JPEG, FAIR1M one ~1000x1000 TIFF read per 224 crop.
IMAGE_HW = {"cityscapes": (1024, 2048), "ade20k": (512, 683), "fair1m": (1000, 1000), "bdd100k": (720, 1280),
            "mot17": (1080, 1920), "ucmerced": (256, 256), "resisc45": (256, 256)}
#: datasets.md: BDD100K MOT 2020 has 200 val videos of ~200 frames.
BDD_VIDEOS, BDD_FRAMES_PER_VIDEO = 200, 200
#: MOT17 train seqLength (seqinfo.ini of MOT17-02/04/05/09/10/11/13): 600+1050+837+525+654+900+750.
MOT17_TRAIN_FRAMES = 5316
#: datasets.md: UC Merced 21 classes x 100, NWPU-RESISC45 45 x 700.
SCENE_IMAGES = {"ucmerced": 21 * 100, "resisc45": 45 * 700}
#: paper.md (Fig 6): 5,850 object-patch queries per FAIR1M variant at 14x14 patches (DINOv2's 16x16: 7,623).
FAIR1M_OBJECT_PATCHES_196 = 5850
#: paper.md: FAIR1M 37 fine classes x 8 crops - 1 (bus has 7) = 295.
FAIR1M_SHORT = 1
#: bench/RESULTS.md "Study costs": one BDD100K-sized video (200 frames) 16.3 s.
TRACK_VIDEO_CPU_S = 16.3
#: MAE decoder of Table 4: 8 blocks of width 512 (mae_vit_base_patch16_dec512d8b) beside ViT-B's encoder.
MAE_DECODER = (8, 512)


# =============================================================================== work counting


def vit_gflop(depth: int, dim: int, tokens: int) -> float:
    """Forward GFLOP of a ViT: per block 24 N d^2 (qkv, proj, MLP x4) + 4 N^2 d (attention)."""
    return depth * (24 * tokens * dim**2 + 4 * tokens**2 * dim) / 1e9


BASE_TILE_GFLOP = vit_gflop(12, 768, 196)


@dataclass(frozen=True)
class FileShape:
    """What one feature file holds: images, ViT forwards, patches per forward, width."""

    dataset: str
    subset: str
    model: str
    variant: str
    images: int
    tiles_per_image: int
    patches_per_tile: int
    dim: int

    @property
    def rows(self) -> int:
        return self.images * self.tiles_per_image * self.patches_per_tile


class Work:
    """Counts one preset's units of work from its config and the study registry."""

    def __init__(self, config: Mapping[str, Any], root: Path = PROJECT) -> None:
        self.config, self.root = config, root
        self.layout = Layout(config, RESULTS)
        figures = [name for name, out in OUTPUTS.items() if out.is_built(self.layout)]
        jobs: dict[tuple[str, str], None] = {}
        for name in figures:
            jobs.update(dict.fromkeys(OUTPUTS[name].jobs(self.layout)))
        self.jobs = list(jobs)
        self._specs: dict[str, ModelSpec] = {}
        #: memory stage -> the most rows (in 768-dim equivalents) it holds at once in any counted job
        self.largest: dict[str, int] = defaultdict(int)

    def spec(self, model: str) -> ModelSpec:
        if model not in self._specs:
            self._specs[model] = resolve(model, self.config.get("models", {}).get(model))
        return self._specs[model]

    # ---- sizes
    def images(self, dataset: str, subset: str) -> int:
        """Images (frames, crops) of one manifest, from the config (Cityscapes: the authors' lists)."""
        sub = self.config["subsets"]
        if dataset == "cityscapes":
            cs = sub["cityscapes"]
            name = cs["val_set"] if subset == "val" else cs["train_sets"][subset]
            return len(read_subset_list(self.root / cs["lists_dir"] / name))  # set8's repeats kept, as trained
        if dataset == "ade20k":
            from vitlocal.datasets.ade20k import NUM_CLASSES

            return NUM_CLASSES * sub["ade20k"]["train_per_class" if subset == "train" else "val_per_class"]
        if dataset == "fair1m":
            from vitlocal.datasets.fair1m import CLASSES

            return len(CLASSES) * sub["fair1m"]["per_class"] - FAIR1M_SHORT
        if dataset == "bdd100k":
            return self.videos("bdd100k") * BDD_FRAMES_PER_VIDEO
        if dataset == "mot17":
            return MOT17_TRAIN_FRAMES if sub["mot17"].get("sequences") is None else _mot17_sequences_unknown()
        return SCENE_IMAGES[dataset]

    def videos(self, dataset: str) -> int:
        if dataset == "bdd100k":
            return self.config["subsets"]["bdd100k"]["n_videos"] or BDD_VIDEOS
        return 7  # datasets.md: MOT17 train sequences 02 04 05 09 10 11 13

    def shape(self, path: str) -> FileShape:
        """The shape of a feature file named by ``Layout.feature_file``."""
        dataset, subset, model, name = path.split("/features/", 1)[1].split("/")
        variant = name.rsplit(".", 1)[0]
        spec = self.spec(model)
        base = base_tiling(dataset, self.config["tracking"]["frame_size"])
        if variant == FULL:
            h, w = base.resize_to or IMAGE_HW[dataset]
            tiles, patches = 1, (round_to_patch(h, spec.patch_size) // spec.patch_size) * (
                round_to_patch(w, spec.patch_size) // spec.patch_size)
        else:
            tiles, patches = base.n_tiles, (spec.input_size // spec.patch_size) ** 2
        return FileShape(dataset, subset, model, variant, self.images(dataset, subset), tiles, patches,
                         spec.embed_dim)

    def feature_files(self, models: set[str]) -> list[str]:
        files: dict[str, None] = {}
        for experiment, model in self.jobs:
            if model in models:
                files.update(dict.fromkeys(p for p in _flatten(EXPERIMENTS[experiment].inputs(self.layout, model))
                                           if "/features/" in p))
        return list(files)

    def models(self) -> set[str]:
        return {model for _, model in self.jobs}

    # ---- units
    def count(self, models: set[str]) -> dict[str, float]:
        """Units of work per stage for ``models`` (see ``STAGES``)."""
        units: dict[str, float] = defaultdict(float)
        for path in self.feature_files(models):
            self._extraction(path, units)
        for experiment, model in self.jobs:
            if model in models:
                PLANNERS.get(experiment, _not_counted)(self, EXPERIMENTS[experiment].inputs(self.layout, model),
                                                       model, units)
        for model in models & set(self.config.get("dvt", {}).get("models", [])):
            dvt_training(self.config, units)
        return dict(units)

    def _extraction(self, path: str, units: dict[str, float]) -> None:
        if path.endswith(".npz"):  # scene GSD features: every image at every scale, one tile each
            dataset, _, model = path.split("/features/", 1)[1].split("/")[:3]
            for size in self.config["scene"]["eval_sizes"]:  # every image fed at each size, one tile each
                units["extract_tiles"] += SCENE_IMAGES[dataset] * self.tile_equivalents(
                    model, 1, (size // self.spec(model).patch_size) ** 2)
            units["decode_mp"] += SCENE_IMAGES[dataset] * _mp(IMAGE_HW[dataset])
            return
        shape = self.shape(path)
        if dvt_file(shape, units, self._hold):
            return
        units["extract_tiles"] += shape.images * self.tile_equivalents(
            shape.model, shape.tiles_per_image, shape.patches_per_tile)
        units["decode_mp"] += shape.images * _mp(IMAGE_HW[shape.dataset])
        if shape.variant.startswith("freqnoise"):
            units["freqnoise_mp"] += shape.images * _mp(IMAGE_HW[shape.dataset])
        units["write_gb"] += shape.rows * len(self.stored_layers(shape)) * shape.dim * 2 / 1e9

    def stored_layers(self, shape: FileShape) -> list[int]:
        """rules/common.smk ``layers_for``: Fig 2's files (main Cityscapes split and val, clean) hold every layer."""
        depth = self.spec(shape.model).depth
        if shape.dataset == "cityscapes" and shape.subset in (self.layout.main_train_set, "val") \
                and shape.variant == "clean":
            return sorted({layer for layer in self.config["extraction"]["layers"] if layer <= depth} | {depth})
        return [depth]

    def tile_equivalents(self, model: str, tiles: int, tokens: int) -> float:
        """Forwards of ``tiles`` inputs of ``tokens`` patches, in ViT-B/16-224 tiles (by FLOPs)."""
        spec = self.spec(model)
        return tiles * vit_gflop(spec.depth, spec.embed_dim, tokens) / BASE_TILE_GFLOP

    def knn(self, units: dict[str, float], gallery: int, queries: int, dims: int, searches: int = 1) -> None:
        units["knn_gflop"] += searches * 2 * gallery * queries * dims / 1e9
        self._hold("knn", gallery * dims)

    def linear(self, units: dict[str, float], rows: int, dims: int) -> None:
        """Sample-epochs (x 1e5) scaled to 768 dims: an epoch is a (rows x d) @ (d x C) forward and backward."""
        units["linear_100k_epochs"] += rows * self.config["probes"]["linear_epochs"] * dims / 768 / 1e5
        self._hold("linear", rows * dims)

    def _hold(self, stage: str, values: int) -> None:
        self.largest[stage] = max(self.largest[stage], values // 768)


def _mot17_sequences_unknown() -> int:
    raise SystemExit("subsets.mot17.sequences is set: the frame count per sequence is only known for all 7")


def _mp(hw: tuple[int, int]) -> float:
    return hw[0] * hw[1] / 1e6


def _flatten(inputs: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for value in inputs.values():
        out += _flatten(value) if isinstance(value, dict) else [value]
    return out


# ---- one planner per experiment: the searches and fits its compute function runs


def _seg(work: Work, train: str, val: str, units: dict[str, float], dims: int | None = None, *,
         linear: bool = True) -> None:
    t, v = work.shape(train), work.shape(val)
    work.knn(units, t.rows, v.rows, dims or t.dim)
    if linear:
        work.linear(units, t.rows, dims or t.dim)


def _train_size(work, inputs, model, units):
    for path in inputs["train_sets"].values():
        _seg(work, path, inputs["val"], units)


def _layerwise(work, inputs, model, units):
    layers = [layer for layer in work.config["extraction"]["layers"] if layer <= work.spec(model).depth]
    for _ in layers:
        _seg(work, inputs["train"], inputs["val"], units, linear=False)


def _degradation(work, inputs, model, units):
    t = work.shape(inputs["train"])
    work.linear(units, t.rows, t.dim)  # trained once on the clean train set
    for path in inputs["val_variants"].values():
        _seg(work, inputs["train"], path, units, linear=False)


def _pair(work, inputs, model, units):
    _seg(work, inputs["train"], inputs["val"], units)


def _variance_removal(work, inputs, model, units):
    dim = work.shape(inputs["train"]).dim
    for m in work.config["variance"]["removed_dims"]:
        if m < dim:
            _seg(work, inputs["train"], inputs["val"], units, dim - m)
    _seg(work, inputs["train"], inputs["val"], units, linear=False)  # k-NN on BatchNorm-standardised features


def _card(work, inputs, model, units):
    """The card's 1-NN searches (raw, each top-m removal, BatchNorm), the best m's choice (for each m, the held-out
    training images against the others), linear probes (raw, best m, BatchNorm) and, for a model of dvt.models,
    k-NN and linear on the DVT files plus the denoiser's timed pass over val; bootstrap, ridge: seconds."""
    train, dim = work.shape(inputs["train"]), work.shape(inputs["train"]).dim
    removed = [m for m in work.config["variance"]["removed_dims"] if 0 <= m < dim]
    for m in sorted({0, *(m for m in removed if m > 0)}):
        _seg(work, inputs["train"], inputs["val"], units, dim - m, linear=False)
    for m in sorted(set(removed)):
        work.knn(units, round((1 - HELD_OUT_SHARE) * train.rows), round(HELD_OUT_SHARE * train.rows), dim - m)
    _seg(work, inputs["train"], inputs["val"], units)  # BatchNorm k-NN, and the raw linear probe
    for _ in ("best m", "BatchNorm"):
        work.linear(units, train.rows, dim)
    if "dvt" in inputs:
        _seg(work, inputs["dvt"]["train"], inputs["dvt"]["val"], units)
        val = work.shape(inputs["dvt"]["val"])
        units["dvt_denoise_tiles"] += val.images * val.tiles_per_image


def _retrieval(work, inputs, model, units, removed: bool | None = None):
    gallery = work.shape(inputs["gallery"])
    queries = sum(FAIR1M_OBJECT_PATCHES_196 * work.shape(p).patches_per_tile / 196 for p in inputs["queries"].values())
    work.knn(units, gallery.rows, round(queries), gallery.dim)
    if removed if removed is not None else model in work.config["retrieval"]["removed_models"]:
        work.knn(units, gallery.rows, round(queries), gallery.dim - work.config["retrieval"]["removed_dims"])


def _scene_knn(work, inputs, model, units):
    share = work.config["scene"]["train_fraction"]
    for dataset in inputs["features"]:
        n = SCENE_IMAGES[dataset]
        dims = work.spec(model).embed_dim
        # [CLS] and mean patch token, each with and without the top dims, at every input size.
        work.knn(units, round(share * n), round((1 - share) * n), dims, 4 * len(work.config["scene"]["eval_sizes"]))


def _reconstruction(work, inputs, model, units):
    scene = work.config["scene"]
    tiles = base_tiling("cityscapes").n_tiles
    val = scene["reconstruction_images"] or work.images("cityscapes", "val")
    ranked = scene["rank_images"] or work.images("cityscapes", work.layout.main_train_set)
    depth, dim = MAE_DECODER
    decoder = vit_gflop(depth, dim, 197) / BASE_TILE_GFLOP
    # intact and zeroed top dims, at each mask ratio: encoder + decoder; ranking: encoder only.
    units["extract_tiles"] += val * tiles * 2 * len(scene["mask_ratios"]) * (1 + decoder) + ranked * tiles
    units["decode_mp"] += (val + ranked) * _mp(IMAGE_HW["cityscapes"])


def _tracking(work, inputs, model, units, copies: int = 1):
    dataset = work.shape(next(iter(_flatten(inputs)))).dataset
    frames = work.images(dataset, work.layout.split(dataset))
    units["tracking_frames"] += copies * frames


def _full_vs_tile(work, inputs, model, units):
    _tracking(work, {"features": inputs["features"]["tiled"]}, model, units, copies=len(inputs["features"]))


def _cityscapes_full_vs_tile(work, inputs, model, units):
    for mode in inputs["train"]:
        _seg(work, inputs["train"][mode], inputs["val"][mode], units)


def _not_counted(work, inputs, model, units):
    """Variance spectra, top-dims overlap, ridge R^2: seconds next to the probes."""


PLANNERS: dict[str, Callable[..., None]] = {
    "train_size": _train_size,
    "layerwise": _layerwise,
    "degradation": _degradation,
    "ade20k": _pair,
    "variance_removal": _variance_removal,
    "card": _card,
    "fair1m_retrieval": _retrieval,
    "scene_knn": _scene_knn,
    "reconstruction": _reconstruction,
    "tracking": _tracking,
    "tracking_mot17": _tracking,
    "tracking_full_vs_tile": _full_vs_tile,
    "cityscapes_full_vs_tile": _cityscapes_full_vs_tile,
    # DVT: the mirrored study's planner on every feature level (bench/fullsize_dvt.py)
    "dvt_cityscapes": dvt_planner(_pair),
    "dvt_ade20k": dvt_planner(_pair),
    "dvt_robustness": dvt_planner(_degradation),
    "dvt_retrieval": dvt_planner(lambda w, i, m, u: _retrieval(w, i, m, u, removed=False)),
    "dvt_tracking": dvt_planner(lambda w, i, m, u: _tracking(w, {"features": i}, m, u)),
}

#: stage -> (unit name, per-unit cost key, what it is).
STAGES: dict[str, tuple[str, str, str]] = {
    "extract_tiles": ("ViT-B/16-224 tile forwards (FLOP-equivalent)", "forward_tile_s",
                      "ViT forwards of every feature file (and Table 4's encoder/decoder)"),
    "decode_mp": ("megapixels decoded", "decode_s_per_mp", "image decode + variant + tiling (loader workers)"),
    "freqnoise_mp": ("megapixels", "freqnoise_s_per_mp", "frequency noise (FFT of the image) beyond the decode"),
    "write_gb": ("GB of float16 tokens written", "write_s_per_gb", "Parquet feature files (writer)"),
    "knn_gflop": ("GFLOP (2 q g d)", "knn_s_per_gflop", "exact 1-NN searches (segmentation, retrieval, scene)"),
    "linear_100k_epochs": ("1e5 sample-epochs at 768 dims", "linear_s_per_100k_epoch", "linear probes"),
    "tracking_frames": ("frames", "tracking_s_per_frame", "ROIAlign + nearest-object matching over all gaps"),
    **DVT_STAGES,
}


# =============================================================================== per-unit costs (CPU)
