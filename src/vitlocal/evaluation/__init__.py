"""Scoring of frozen features: splits, k-NN / linear probes at full resolution, tidy rows (shared by every study)."""
