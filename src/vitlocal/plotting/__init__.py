"""Drawing helpers every study's ``figures.py`` uses: style, demo banners, provenance, atomic writes, tables."""
