"""Datasets: the on-disk format, importers, the procedural world and torch readers."""
