"""Benchmark scripts: side-by-side timings and memory against peers.

Run them as modules, e.g. ``python -m speechbrain_mamba.benchmarks.scan``.
They report ratios measured in one run; the tests never time anything.
"""
