"""CPU thread policy, set once at start-up (``terrasynth.cli.main`` calls :func:`configure_threads`).

Placeholder; filled in after measuring (see docs/benchmarks.md, "CPU contention").
"""

from __future__ import annotations


def configure_threads() -> None:
    """Set the thread policy before torch (and its OpenMP runtime) is loaded."""
