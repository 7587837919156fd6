"""Composition control moves generated maps towards the requested class shares."""

from __future__ import annotations

import pytest

from conftest import landcover_dataset, run_cli
from terrasynth.evaluate.realism import compositions
from terrasynth.inference.landcover import generate_maps, load_landcover


@pytest.mark.slow
def test_composition_control_moves_composition(tmp_path):
    # Half the maps are forest with a small town, half are built-up with water: very different shares.
    data = landcover_dataset(tmp_path / "data", n=40)
    run = tmp_path / "run"
    rc = run_cli(
        "landcover", "train", "--data", data, "--out", run, "--set", "max_minutes=null",
        "--set", "autoencoder.block_out_channels=[16,16]", "--set", "autoencoder.norm_num_groups=8",
        "--set", "autoencoder.max_steps=150", "--set", "autoencoder.batch_size=8",
        "--set", "diffusion.block_out_channels=[16,32]", "--set", "diffusion.attention=[false,true]",
        "--set", "diffusion.norm_num_groups=8", "--set", "diffusion.max_steps=250", "--set", "diffusion.batch_size=16",
        "--set", "diffusion.lr=1e-3", "--set", "diffusion.composition_control=true", "--set", "sampling.steps=10",
    )  # fmt: skip
    assert rc == 0
    model = load_landcover(run)
    built = model.scheme.codes.index(50)
    forest = model.scheme.codes.index(10)
    towns, _ = generate_maps(model, 8, composition={50: 0.8}, guidance=2.0, progress=False)
    woods, _ = generate_maps(model, 8, composition={10: 0.8}, guidance=2.0, progress=False)
    ct, cw = compositions(towns, model.scheme).mean(0), compositions(woods, model.scheme).mean(0)
    assert ct[built] > cw[built] + 0.2, (ct, cw)
    assert cw[forest] > ct[forest] + 0.2, (ct, cw)
