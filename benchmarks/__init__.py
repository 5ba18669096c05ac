"""Benchmarks: side-by-side measurements and their recorded results."""
