"""Benchmarks and studies of snnl; run each as ``python -m bench.NAME`` from the repository root."""
