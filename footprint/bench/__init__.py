"""Benchmarks behind ``footprint bench``: measured side by side, reported as ratios."""
