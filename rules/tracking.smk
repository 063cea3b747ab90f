# Object tracking (paper Section 6): Figs 8, 9, 12 and Table 5
# (src/vitlocal/studies/tracking/).

# One named target per figure and table (`snakemake --cores 8 fig8`).
figure_rules("tracking")
