"""Determinism: the same config and seed give byte-identical datasets (every tile and index.csv) from
separate processes; a different seed gives a different sample. Commands whose own tests already
prove this are listed in docs/reliability.md."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.transform import from_origin

from reliability_util import cli, make_pairs, sha_tree


def _index_splits(root):
    import csv

    return {row["id"]: row["split"] for row in csv.DictReader((root / "index.csv").open())}


def test_import_same_seed_identical_other_seed_other_splits(tmp_path):
    img, msk = make_pairs(tmp_path, n=10, size=32)
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        r = cli("data", "import-pairs", img, msk, "--tile", 16, "--seed", seed, "--out", tmp_path / name)
        assert r.rc == 0, r.stderr
        runs[name] = tmp_path / name
    assert sha_tree(runs["a"]) == sha_tree(runs["b"])
    assert _index_splits(runs["a"]) != _index_splits(runs["c"])  # the seed draws the split
    # ... and only the split: the tiles themselves are the same pixels.
    tiles = lambda d: {k: v for k, v in sha_tree(d).items() if k.endswith(".tif")}  # noqa: E731
    assert tiles(runs["a"]) == tiles(runs["c"])


def test_acquire_same_seed_identical_other_seed_other_splits(tmp_path):
    from geo_fixtures import write_cog

    rng = np.random.default_rng(1)
    codes = rng.choice(np.array([10, 30, 50, 80], np.uint8), (16, 16)).repeat(8, 0).repeat(8, 1)
    cog = write_cog(tmp_path / "wc.tif", codes[None], "EPSG:4326", from_origin(6.5, 0.4, 1 / 12000, 1 / 12000),
                    nodata=0)  # fmt: skip
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        r = cli("data", "acquire", "--product", "landcover", "--landcover", cog, "--tile", 16, "--gsd", "native",
                "--block-size", 150, "--seed", seed, "--out", tmp_path / name)  # fmt: skip
        assert r.rc == 0, r.stderr
        runs[name] = tmp_path / name
    assert sha_tree(runs["a"]) == sha_tree(runs["b"])
    assert _index_splits(runs["a"]) != _index_splits(runs["c"])


@pytest.mark.slow
def test_segment_training_same_seed_same_weights_and_metrics(tmp_path):
    """Two independent CPU runs with one seed: identical weights and identical metrics; another seed differs."""
    import json

    from safetensors.torch import load_file
    import torch

    from conftest import make_dataset

    data = make_dataset(tmp_path / "d", n=6)
    fast = ["--encoder", "tu-mobilenetv3_small_050", "--batch-size", 4, "--max-steps", 4, "--arch", "unet",
            "--set", "val_every=2", "--set", "checkpoint_every=2", "--set", "mixed_precision=no"]  # fmt: skip
    out = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        r = cli("segment", "train", "--data", data, "--out", tmp_path / name, "--seed", seed, *fast)
        assert r.rc == 0, r.stderr
        m = tmp_path / f"{name}.json"
        assert cli("segment", "evaluate", "--model", tmp_path / name, "--data", data, "--out", m).rc == 0
        out[name] = (load_file(str(tmp_path / name / "last.safetensors")), json.loads(m.read_text()))
    (wa, ma), (wb, mb), (wc, _) = out["a"], out["b"], out["c"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ma["confusion"] == mb["confusion"] and ma["macro_miou"] == mb["macro_miou"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
