"""Helpers shared by the tests and the benchmarks (speech generation, corpora).

Benchmarks must never import ``tests/``; what both need lives here, inside the package.
"""
