# Local-feature cards (issue 22): `snakemake card_<model>` and `snakemake cards`
# (src/vitlocal/studies/card/). The `card` experiment of each carded model runs
# through the generic run_experiment rule; these rules only draw.

from vitlocal.studies.card import card_jobs, card_models, card_paths, card_reads, card_settings

CARD_MODELS = card_models(LAYOUT)


rule card:
    input:
        lambda wildcards: card_reads(LAYOUT, wildcards.model),
    output:
        **{s: (report(p, caption="../report/card.rst", category="Cards",
                      labels={"figure": "card_{model}", "model": "{model}"})
               if s == "png" else p) for s, p in card_paths(LAYOUT, "{model}").items()},
    params:
        model=lambda wildcards: wildcards.model,
        models=CARD_MODELS,
        main_train_set=MAIN_TRAIN,
        resamples=card_settings(config)["resamples"],
        seed=config["seed"],
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
            **card_paths(LAYOUT, _model),


if CARD_MODELS:

    rule cards:
        input:
            cards=[card_paths(LAYOUT, m)["csv"] for m in CARD_MODELS],
            reads=[experiment_file(e, m) for e, m in card_jobs(LAYOUT)],
        output:
            csv=report(f"{RESULTS}/figures/cards/cards.csv", caption="../report/card.rst", category="Cards",
                       labels={"figure": "cards", "model": "all"}),
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
