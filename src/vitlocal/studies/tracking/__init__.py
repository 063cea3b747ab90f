"""Object tracking (paper Section 6): nearest object at t + Δ from ROIAlign features of the patch grid.

Fig 8 (BDD100K), Fig 9 (MOT17), and Table 5 / Fig 12 (tiled vs whole frames:
tracking on BDD100K and Cityscapes k-NN / linear mIoU). ``roi`` rebuilds
each frame's grid and pools the boxes, ``matching`` scores the gaps,
``compute`` makes the rows, ``figures`` the writers. Rules:
``rules/tracking.smk``.
"""

from __future__ import annotations

from ..base import Experiment, Output, Study, config_models, figure_writer, rows_of

TRACKING_MODELS = config_models("tracking_models")
#: Table 5 / Fig 12 modes -> feature variant.
MODES = {"tiled": "clean", "full": "full"}


def _tracking_keys(dataset):
    """What ``TrackingSettings.from_config``, the root and the split of ``dataset`` read."""
    return ("tracking.gaps", "tracking.roi_size", "tracking.roi_aligned", "probes.knn_metric", "device",
            f"datasets.{dataset}", f"subsets.{dataset}.split")


def _video_inputs(dataset, variants):
    def inputs(layout, model):
        split = layout.split(dataset)
        files = {mode: layout.feature_file(dataset, split, model, variant) for mode, variant in variants.items()}
        return {"features": files if len(files) > 1 else next(iter(files.values())),
                "manifest": layout.manifest(dataset, split)}

    return inputs


def _cityscapes_inputs(layout, model):
    train = layout.main_train_set
    return {"train": {mode: layout.feature_file("cityscapes", train, model, v) for mode, v in MODES.items()},
            "val": {mode: layout.feature_file("cityscapes", "val", model, v) for mode, v in MODES.items()},
            "val_manifest": layout.manifest("cityscapes", "val")}


def _tracking(dataset, experiment):
    def run(job):
        from .compute import TrackingSettings, tracking_rows

        return tracking_rows(job.model, job.inputs["features"], job.inputs["manifest"], experiment=experiment,
                             dataset=dataset, root=job.params["roots"][dataset],
                             split=job.config["subsets"][dataset]["split"],
                             settings=TrackingSettings.from_config(job.config), units=job.units)

    return run


def _full_vs_tile(job):
    from .compute import TrackingSettings, full_vs_tile_rows

    return full_vs_tile_rows(job.model, dict(job.inputs["features"]), job.inputs["manifest"], dataset="bdd100k",
                             root=job.params["roots"]["bdd100k"], split=job.config["subsets"]["bdd100k"]["split"],
                             settings=TrackingSettings.from_config(job.config))


def _cityscapes_full_vs_tile(job):
    from .compute import cityscapes_full_vs_tile_rows

    return cityscapes_full_vs_tile_rows(job.model, dict(job.inputs["train"]), dict(job.inputs["val"]),
                                        target=job.target("cityscapes"), probes=job.probes)


def cityscapes_models(config):
    """Models of Table 5's Cityscapes columns (paper: DINO, MAE) that the study extracts."""
    return [m for m in config["tracking"]["cityscapes_models"] if m in config["study_models"]]


def full_vs_tile_models(config):
    """Models of Table 5's tracking columns (paper: DINO, DINOv2, MAE) among ``tracking_models``.

    Whole frames need a position embedding resampled to the frame's grid; BEiT-style
    models (SimMIM's relative position bias) cannot take them.
    """
    return [m for m in config["tracking"]["full_vs_tile_models"] if m in config["tracking_models"]]


def _table5_jobs(layout):
    """Tracking rows when BDD100K is configured, Cityscapes rows when Cityscapes is."""
    return rows_of("tracking_full_vs_tile", full_vs_tile_models, needs=["bdd100k"])(layout) + rows_of(
        "cityscapes_full_vs_tile", cityscapes_models, needs=["cityscapes"])(layout)


STUDY = Study(
    name="tracking",
    experiments={
        "tracking": Experiment(_tracking("bdd100k", "tracking"), _video_inputs("bdd100k", {"tiled": "clean"}),
                               config_keys=_tracking_keys("bdd100k"), units=True),
        "tracking_mot17": Experiment(_tracking("mot17", "tracking_mot17"), _video_inputs("mot17", {"tiled": "clean"}),
                                     config_keys=_tracking_keys("mot17")),
        "tracking_full_vs_tile": Experiment(_full_vs_tile,
                                            _video_inputs("bdd100k", {"tiled": "clean", "full": "full"}),
                                            config_keys=_tracking_keys("bdd100k")),
        "cityscapes_full_vs_tile": Experiment(_cityscapes_full_vs_tile, _cityscapes_inputs,
                                              config_keys=("probes", "seed", "device", "datasets.cityscapes")),
    },
    outputs={
        "fig8": Output("figure", figure_writer(__name__, "fig8"), rows_of("tracking", TRACKING_MODELS, needs=["bdd100k"]),
                       title="Tracking on BDD100K: nearest object at t + Δ (Fig 8)"),
        "fig9": Output("figure", figure_writer(__name__, "fig9"), rows_of("tracking_mot17", TRACKING_MODELS, needs=["mot17"]),
                       title="Tracking on MOT17: nearest object at t + Δ (Fig 9)"),
        "fig12": Output("figure", figure_writer(__name__, "fig12"), _table5_jobs,
                        title="Tiled vs whole frames: tracking and Cityscapes mIoU (Fig 12)"),
        "table5": Output("table", figure_writer(__name__, "table5"), _table5_jobs,
                         title="Tiled vs whole frames: Cityscapes mIoU and tracking accuracy (Table 5)"),
    },
)
