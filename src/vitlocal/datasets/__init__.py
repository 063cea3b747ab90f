"""Readers for the official on-disk layouts of every dataset of the study."""
