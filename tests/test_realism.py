"""Realism metrics on hand-made maps whose patch counts, areas and edges are known."""

from __future__ import annotations

import numpy as np
import pytest

from terrasynth.classes import WORLDCOVER
from terrasynth.evaluate.realism import (
    aggregation_index,
    composition_error,
    diversity,
    jensen_shannon,
    landscape_metrics,
    nearest_disagreement,
    realism_metrics,
)


def two_squares() -> np.ndarray:
    """64x64 tree cover with two separate 10x10 built-up squares."""
    m = np.full((64, 64), 10, np.uint8)
    m[5:15, 5:15] = 50
    m[40:50, 30:40] = 50
    return m


def test_landscape_metrics_of_two_squares():
    lm = landscape_metrics(two_squares()[None], WORLDCOVER, res=10.0)[50]
    area_ha = 64 * 64 * 100 / 1e4  # 40.96 ha
    assert lm["patches"] == 2
    assert lm["patch_density"] == pytest.approx(2 / area_ha * 100)  # per 100 ha
    assert lm["area_mn"] == pytest.approx(1.0)  # 100 cells of 100 m2
    assert lm["edge_density"] == pytest.approx(2 * 40 * 10 / area_ha)  # m per ha, map border not counted
    assert lm["largest_patch_index"] == pytest.approx(100 / 4096 * 100)
    # 2 x 180 like adjacencies; the most 200 cells can have is 2*14*13 + 2*4 - 1 = 371
    assert lm["aggregation_index"] == pytest.approx(100 * 360 / 371)
    assert lm["presence"] == 1.0


def test_diagonal_cells_join_one_patch_and_absent_classes_are_nan():
    m = np.full((32, 32), 10, np.uint8)
    m[3, 3] = m[4, 4] = 50  # touching corners: one patch under the 8-neighbour rule
    lm = landscape_metrics(np.stack([m, np.full((32, 32), 10, np.uint8)]), WORLDCOVER, codes=[50, 80])
    assert lm[50]["patches"] == 1
    assert lm[50]["presence"] == 0.5
    assert np.isnan(lm[80]["patch_density"]) and lm[80]["presence"] == 0


def test_aggregation_index_extremes():
    checker = (np.indices((8, 8)).sum(0) % 2 * 40 + 10).astype(np.uint8)
    assert aggregation_index(checker, 50) == 0.0  # no like neighbours at all
    block = np.full((8, 8), 10, np.uint8)
    block[:4, :4] = 50
    assert aggregation_index(block, 50) == 100.0
    assert np.isnan(aggregation_index(block, 80))


def test_jensen_shannon_bounds():
    assert jensen_shannon([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert 0 < jensen_shannon([0.9, 0.1], [0.8, 0.2]) < 0.05


def test_diversity_and_memorisation():
    a = two_squares()
    b = np.full_like(a, 80)
    assert diversity(np.stack([a, a, a])) == 0.0
    assert diversity(np.stack([a, b])) == 1.0
    rotated = np.rot90(a, 1).copy()[None]
    assert nearest_disagreement(rotated, a[None])[0] == 0.0
    assert nearest_disagreement(rotated, a[None], transforms=False)[0] > 0.0
    assert nearest_disagreement(b[None], a[None])[0] == 1.0


def test_realism_metrics_identical_sets_and_shifted_sets():
    rng = np.random.default_rng(0)
    real = np.stack([np.roll(two_squares(), rng.integers(0, 30, 2), (0, 1)) for _ in range(6)])
    same = realism_metrics(real, real.copy(), WORLDCOVER)
    assert same["class_jsd"] == pytest.approx(0.0)
    assert same["landscape_worst_relative_error"] == pytest.approx(0.0)
    assert same["top_classes"] == [10, 50]
    assert same["memorisation"]["under_5_percent"] == 6  # they are the training maps
    fewer = real.copy()
    fewer[:, :, :] = np.where(fewer == 50, 10, fewer)
    fewer[:, 0:3, 0:3] = 50  # one small patch instead of two squares
    diff = realism_metrics(real, fewer, WORLDCOVER, train=real)
    assert diff["class_jsd"] > 0.01
    assert diff["landscape"]["50"]["generated"]["patches"] == 1
    assert diff["landscape_worst_relative_error"] > 0.4


def test_composition_error():
    m = np.full((2, 10, 10), 10, np.uint8)
    m[:, :3, :] = 50  # 30% built-up
    err = composition_error(m, {50: 0.5}, WORLDCOVER)
    assert err["classes"]["50"] == {"requested": 0.5, "achieved": pytest.approx(0.3)}
    assert err["mean_abs_error"] == pytest.approx(0.2)
