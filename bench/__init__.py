"""The benchmarks: `python -m bench [--quick]` runs every scenario (see bench/run.py)."""
