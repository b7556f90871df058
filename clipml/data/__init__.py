"""Datasets, partial-label masks and transforms."""
