"""Benchmarks of ume's editing methods (not part of the installed package; run from the project root)."""
