"""Foundations every floor may import: configuration, errors, fault points, process ranks, temporary files, Markdown."""
