# Feature variance (paper Section 4): Fig 4a-c, the top-m overlap, Table 6
# (src/vitlocal/studies/variance/).

# One named target per figure and table (`snakemake --cores 8 fig4b`).
figure_rules("variance")
