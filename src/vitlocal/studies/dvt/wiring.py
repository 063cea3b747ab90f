"""Paths and inputs of the DVT rules (``rules/dvt.smk``), computed from the config alone."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ...errors import ConfigError


def checkpoint_path(config: Mapping[str, Any], results: str, model: str) -> str:
    """The stage-2 denoiser of ``model``: an authors' release named in ``dvt.checkpoints``, else ours."""
    return config["dvt"]["checkpoints"].get(model) or f"{results}/dvt/stage2/{model}.pt"


def stage1_path(results: str, model: str) -> str:
    """The gathered stage-1 file of ``model`` (``denoise.stage1_files``): what stage 2, fig_dvt and the card read."""
    return f"{results}/dvt/stage1/{model}.npz"


def stage1_sources(
    config: Mapping[str, Any], results: str, datasets: Sequence[str], root_of: Callable[[str], str]
) -> list[dict[str, Any]]:
    """The training manifests stage 1 reads (configured datasets only), with their tile budget.

    A val split is refused: stage 1 must never see an evaluation image.
    """
    sources = []
    for dataset, subset in config["dvt"]["stage1_subsets"].items():
        if dataset not in datasets:
            continue
        if subset == "val":
            raise ConfigError(f"dvt.stage1_subsets.{dataset} = val: stage 1 must never see evaluation images")
        sources.append({"dataset": dataset, "root": root_of(dataset), "max_tiles": config["dvt"]["stage1_tiles"],
                        "manifest": f"{results}/subsets/{dataset}/{subset}.csv"})
    return sources


def stage1_inputs(sources: Sequence[Mapping[str, Any]], data_input: Callable[[str], dict]) -> dict[str, str]:
    """Named inputs of the stage-1 rule: each source's manifest and (synthetic) data directory."""
    inputs = {}
    for source in sources:
        inputs[f"manifest_{source['dataset']}"] = source["manifest"]
        inputs.update({f"{k}_{source['dataset']}": v for k, v in data_input(source["dataset"]).items()})
    return inputs


def denoised_pairs(paths: Sequence[str], method: str = "dvt") -> list[tuple[str, str]]:
    """``(raw file, denoised file)`` for each ``method`` file among ``paths`` (each once, in order).

    ``features/.../dvt.parquet`` comes from ``clean.parquet`` beside it,
    ``dvt-<variant>.parquet`` from ``<variant>.parquet`` (``Layout.denoised``);
    likewise ``dvt1`` files for ``method="dvt1"``.
    """
    pairs = {}
    for path in paths:
        folder, _, name = str(path).rpartition("/")
        variant = name.removesuffix(".parquet")
        if "features" in folder.split("/") and name.endswith(".parquet") and (
                variant == method or variant.startswith(f"{method}-")):
            raw = "clean" if variant == method else variant.removeprefix(f"{method}-")
            pairs[path] = f"{folder}/{raw}.parquet"
    return [(raw, out) for out, raw in pairs.items()]


def stage1_feature_jobs(paths: Sequence[str], manifest_of: Callable[[str, str], str]) -> list[dict[str, str]]:
    """The ``dvt1`` files among ``paths``: ``{raw, out, dataset, manifest}`` each.

    A feature file lives at ``.../features/<dataset>/<subset>/<model>/<variant>.parquet``;
    its tiles are rebuilt from the subset's manifest (``manifest_of(dataset, subset)``).
    """
    jobs = []
    for raw, out in denoised_pairs(paths, "dvt1"):
        dataset, subset = raw.split("/")[-4:-2]
        jobs.append({"raw": raw, "out": out, "dataset": dataset, "manifest": manifest_of(dataset, subset)})
    return jobs
