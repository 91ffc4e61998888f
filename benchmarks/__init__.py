"""Benchmarks: each `python -m benchmarks.NAME` prints progress on stderr and one JSON line on stdout."""
