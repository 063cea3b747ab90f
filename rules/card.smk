# Local-feature cards (issue 22): `snakemake card_<model>` and `snakemake cards`
# (src/vitlocal/studies/card/). The `card` experiment of each carded model runs
# through the generic run_experiment rule; these rules only draw.

from vitlocal.studies.card import card_jobs, card_models, read_jobs

CARD_MODELS = card_models(LAYOUT)


def card_paths(model):
    return {s: f"{RESULTS}/cards/{model}/card.{s}" for s in ("pdf", "png", "json", "csv")}


def card_reads(model):
    """The model's card CSV and the CSVs it reads, and the other carded models' (drawn in grey)."""
    jobs = [("card", m) for m in CARD_MODELS] + read_jobs(LAYOUT, model)
    for other in CARD_MODELS:
        jobs += [job for job in read_jobs(LAYOUT, other) if job[0] == "layerwise"]
    return list(dict.fromkeys(experiment_file(e, m) for e, m in jobs))


rule card:
    input:
        lambda wildcards: card_reads(wildcards.model),
    output:
        **{s: (report(p, caption="../report/card.rst", category="Cards", labels={"model": "{model}"})
               if s == "png" else p) for s, p in card_paths("{model}").items()},
    params:
        model=lambda wildcards: wildcards.model,
        models=CARD_MODELS,
        main_train_set=MAIN_TRAIN,
    log:
        f"{LOGS}/cards/{{model}}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/make_card.py"


# One named target per carded model (`snakemake card_dino`).
for _model in CARD_MODELS:

    rule:
        name:
            f"card_{_model}"
        input:
            **card_paths(_model),


if CARD_MODELS:

    rule cards:
        input:
            cards=[card_paths(m)["csv"] for m in CARD_MODELS],
            reads=[experiment_file(e, m) for e, m in card_jobs(LAYOUT)],
        output:
            csv=report(f"{RESULTS}/figures/cards/cards.csv", caption="../report/card.rst", category="Cards",
                       labels={"model": "all"}),
            tex=f"{RESULTS}/figures/cards/cards.tex",
            md=f"{RESULTS}/figures/cards/cards.md",
        params:
            models=CARD_MODELS,
        log:
            f"{LOGS}/cards/cards.log",
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/make_cards_table.py"
