"""Checks a JSON schema cannot express, and names derived from the config.

The schema (schemas/config.schema.yaml) catches unknown keys and wrong types;
this module catches references that do not resolve: unknown model names,
missing subset lists, impossible frequency bands. Both run when the Snakefile
is parsed, so a bad config stops the run before any job starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, DatasetNotFoundError

#: Datasets of the study, in the order of paper.md.
DATASETS = ("cityscapes", "ade20k", "fair1m", "bdd100k", "mot17", "ucmerced", "resisc45")

MODEL_LISTS = ("study_models", "retrieval_models", "tracking_models")


def dataset_names(config: Mapping[str, Any]) -> list[str]:
    """Datasets configured, in canonical order."""
    return [name for name in DATASETS if name in config.get("datasets", {})]


def subset_names(config: Mapping[str, Any], dataset: str) -> list[str]:
    """The manifests the workflow builds for ``dataset``."""
    if dataset == "cityscapes":
        return [*config["subsets"]["cityscapes"]["train_sets"], "val"]
    if dataset == "ade20k":
        return ["train", "val"]
    if dataset == "fair1m":
        return [config["subsets"]["fair1m"]["split"]]
    if dataset == "bdd100k":
        return [config["subsets"]["bdd100k"]["split"]]
    if dataset == "mot17":
        return [config["subsets"]["mot17"]["split"]]
    if dataset in ("ucmerced", "resisc45"):
        return ["all"]
    raise ConfigError(f"datasets.{dataset}: unknown dataset; allowed: {', '.join(DATASETS)}")


def _check_models(config: Mapping[str, Any]) -> None:
    from .models.registry import resolve

    overrides = config.get("models", {})
    for key, entry in overrides.items():
        try:
            resolve(key, entry)
        except ConfigError as exc:
            raise ConfigError(f"models.{key}: {exc}") from None
    for list_key in MODEL_LISTS:
        for i, key in enumerate(config.get(list_key, [])):
            try:
                resolve(key, overrides.get(key))
            except ConfigError as exc:
                raise ConfigError(f"{list_key}[{i}] = {key!r}: {exc}") from None


def _check_cityscapes_lists(config: Mapping[str, Any], workdir: Path) -> None:
    cs = config["subsets"]["cityscapes"]
    if cs["main_train_set"] not in cs["train_sets"]:
        raise ConfigError(
            f"subsets.cityscapes.main_train_set = {cs['main_train_set']!r}: "
            f"not one of subsets.cityscapes.train_sets ({', '.join(cs['train_sets'])})"
        )
    for name in (*cs["train_sets"].values(), cs["val_set"]):
        path = workdir / cs["lists_dir"] / name
        if not path.is_file():
            raise ConfigError(f"subsets.cityscapes: list file {path} does not exist")


def _check_bands(config: Mapping[str, Any]) -> None:
    for i, (inner, outer) in enumerate(config["degradations"]["frequency_bands"]):
        if not inner < outer:
            raise ConfigError(
                f"degradations.frequency_bands[{i}] = [{inner}, {outer}]: "
                "the inner radius must be smaller than the outer radius"
            )


def check_config(config: Mapping[str, Any], workdir: str | Path = ".") -> None:
    """Raise :class:`ConfigError` naming the first key that cannot work."""
    _check_models(config)
    if "cityscapes" in config.get("datasets", {}):
        _check_cityscapes_lists(config, Path(workdir))
    _check_bands(config)


def check_dataset_roots(config: Mapping[str, Any], workdir: str | Path = ".") -> None:
    """Raise one :class:`DatasetNotFoundError` listing every official dataset whose root is missing.

    Run before any job (the workflow's ``onstart``): otherwise each job finds
    its own dataset missing, one failure at a time, after the checkpoint
    downloads have been tried. Synthetic datasets are workflow outputs.
    """
    import importlib

    missing = []
    for name in dataset_names(config):
        entry = config["datasets"][name]
        root = Path(workdir, entry["root"])
        if entry.get("source", "official") != "synthetic" and not root.is_dir():
            info = importlib.import_module(f".datasets.{name}", __package__).INFO
            missing.append(f"datasets.{name}: {info.missing(entry['root'])}")
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} configured dataset(s) not found; nothing was run.\n\n"
            + "\n\n".join(missing)
            + "\n\nPlace each one there, point its `root` at it, or remove it from `datasets:` "
            "to run without the figures that need it."
        )
