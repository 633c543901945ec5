"""Benchmarks: printed figures and ratios measured in one run; not part of the tests."""
