"""Benchmarks: each compares expman with a baseline measured in the same run."""
