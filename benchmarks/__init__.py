"""Benchmarks for sparsekern: dense and sparse timed side by side in one run, reported as ratios.

``python -m benchmarks.run`` is the runner (see benchmarks/README.md); ``pytest benchmarks/ --benchmark-only``
runs the pytest-benchmark suite. This package deliberately imports nothing heavy: the runner must set the
thread environment before torch is imported.
"""
