"""Experiments built on the capabilities: the cross-test matrix and the mixing sweep."""
