"""Helpers that tests and benchmarks share (as pipecat ships ``pipecat.tests.utils``); benchmarks
never import ``tests/``.

* :mod:`.voxtral`: drive the real Voxtral code to a chosen output on dummy weights.
* :mod:`.resources`: what a process holds (memory, threads, tasks, KV caches).
"""
