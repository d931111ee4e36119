"""Benchmarks. Each module prints a table; `python -m bench` runs them all."""
