"""FAIR1M object-patch retrieval (paper Section 5): is a patch's nearest clean patch still itself?

Figs 6, 7, 11 and Table 3 (``compute`` has the numbers, ``figures`` the
writers). One job per retrieval model searches the queries of every
transform and degradation at once, with and without the query's own source
image in the gallery, and writes the rows of ``<model>-<m>`` (top-m variance
dims removed) too. Rules: ``rules/retrieval.smk``.
"""

from __future__ import annotations

from ..base import Experiment, Output, Study, config_models, figure_writer, rows_of

#: Where a query's nearest clean patch falls, in order of precedence (``compute.categorise``).
CATEGORIES = ("same_patch", "same_fine", "same_super", "other_object", "background")
#: Experiments of the rows: Fig 6 protocol, and Fig 7's (own source image excluded).
EXPERIMENT, EXCLUDE_OWN = "fair1m_retrieval", "fair1m_retrieval_exclude_own"


def _inputs(layout, model):
    split = layout.split("fair1m")
    variants = [*layout.transform_variants(), *layout.degradation_variants()]
    return {
        "gallery": layout.feature_file("fair1m", split, model),
        "queries": {v: layout.feature_file("fair1m", split, model, v) for v in variants},
        "manifest": layout.manifest("fair1m", split),
    }


def _retrieval(job):
    from ...subsets import read_manifest
    from .compute import removed_for, retrieval_rows, search_settings

    return retrieval_rows(job.model, job.inputs["gallery"], dict(job.inputs["queries"]),
                          read_manifest(job.inputs["manifest"]), removed=removed_for(job.model, job.config),
                          units=job.units, **search_settings(job.config))


def _retrieval_keys(config, model):
    """The search settings; ``retrieval.removed_dims`` only for the models with a ``<model>-<m>`` row."""
    removed = ("retrieval.removed_dims",) if model in config["retrieval"]["removed_models"] else ()
    return ("retrieval.removed_models", *removed, "retrieval.block_size", "retrieval.exclude_own", "probes.knn_metric",
            "device")


def fig11_models(config):
    """The models of Fig 11 (``retrieval.fig11_models``) configured for retrieval; if none, every retrieval model.

    The fallback keeps ``fig11`` buildable in a small config (e.g. MAE
    only); the figure and its CSV name the models that are missing.
    """
    wanted = [m for m in config.get("retrieval", {}).get("fig11_models", []) if m in config["retrieval_models"]]
    return wanted or list(config["retrieval_models"])


def _writer(name):
    return figure_writer(__name__, name, whole_out=True)


_ALL = config_models("retrieval_models")

STUDY = Study(
    name="retrieval",
    experiments={"fair1m_retrieval": Experiment(_retrieval, _inputs, config_keys=_retrieval_keys, units=True)},
    outputs={
        "fig6": Output("figure", _writer("fig6"), rows_of("fair1m_retrieval", _ALL, needs=["fair1m"]),
                       title="FAIR1M nearest-patch retrieval under transforms and degradations (Fig 6)"),
        "fig7": Output("figure", _writer("fig7"), rows_of("fair1m_retrieval", _ALL, needs=["fair1m"]),
                       title="FAIR1M retrieval with the query's own image excluded (Fig 7)"),
        "fig11": Output("figure", _writer("fig11"), rows_of("fair1m_retrieval", fig11_models, needs=["fair1m"]),
                        title="FAIR1M retrieval: DINO vs iBOT vs DINOv2 (Fig 11)",
                        config_keys=("retrieval.fig11_models", "retrieval_models")),
        "table3": Output("table", _writer("table3"), rows_of("fair1m_retrieval", _ALL, needs=["fair1m"]),
                         title="FAIR1M few-shot subset: patches per fine class (Table 3)"),
    },
)
