"""Shared fixtures: paths to the real sample data (skipped when absent) and tiny GeoTIFFs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TERRASYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests run on 2 cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def run_cli(*args: str) -> int:
    from terrasynth.cli import main

    return main([str(a) for a in args])
