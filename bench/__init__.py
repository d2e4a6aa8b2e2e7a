"""Benchmarks behind `dualflow bench ...`; each measures its own baselines in the same run."""
