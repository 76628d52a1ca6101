"""Helpers that tests and benchmarks share (benchmarks never import ``tests/``)."""
