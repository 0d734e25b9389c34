"""Benchmarks of the edge agent; run by hand (``python -m bench.<name>``), never in CI."""
