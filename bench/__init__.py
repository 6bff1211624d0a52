"""Benchmarks: each script prints a table and writes it (and a chart) to bench/results/."""
