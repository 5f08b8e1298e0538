"""Benchmarks: each prints its figures, side by side where a ratio says more than an absolute time."""
