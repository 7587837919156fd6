"""Procedural world: determinism, spatial structure, rendering knobs, dataset contract, CLI."""

import numpy as np
import pytest
from scipy import ndimage

from conftest import run_cli
from terrasynth.data.dataset import Dataset, DatasetWriter
from terrasynth.data.world import WorldConfig, generate_world
from terrasynth.data.world_landcover import BUILT, CROP, TREE, WATER, WETLAND, make_landcover
from terrasynth.data.world_render import render
from terrasynth.errors import UserError

SMALL = dict(tiles=8, size=32)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.glob("*/*.tif"))}


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = generate_world(WorldConfig(seed=1, **SMALL), tmp_path / "a")
    generate_world(WorldConfig(seed=1, **SMALL), tmp_path / "b", workers=2)  # pool: same bytes
    generate_world(WorldConfig(seed=2, **SMALL), tmp_path / "c")
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(fa) == 16 and fa == fb
    assert fa.keys() == fc.keys() and all(fa[k] != fc[k] for k in fa)
    assert (tmp_path / "a" / "index.csv").read_text() == (tmp_path / "b" / "index.csv").read_text()
    assert a.info.kind == "procedural" and a.scheme.name == "worldcover" and a.verify() == []


def test_dataset_contract_and_region_splits(tmp_path):
    cfg = WorldConfig(tiles=40, size=32, seed=0)
    assert cfg.region_tiles() == 2 and cfg.num_regions() == 10
    ds = generate_world(cfg, tmp_path / "w")
    assert len(ds) == 40 and ds.info.tile_size == 32 and ds.info.gsd == 10.0
    region_split = {}
    for r in ds.records:
        region_split.setdefault(r.id.split("_")[0], set()).add(r.split)
        assert ds.read_image(r).shape == (32, 32, 3) and ds.read_label(r).shape == (32, 32)
    assert all(len(s) == 1 for s in region_split.values())  # a region never straddles splits
    assert sorted(s.pop() for s in region_split.values()) == ["test"] * 2 + ["train"] * 7 + ["val"]
    present = {c for c, f in ds.class_frequencies().items() if f > 0}
    assert len(present) >= 6 and {TREE, BUILT, WATER} <= present and 0 not in present
    assert (tmp_path / "w" / "config.yaml").exists()
    # neighbouring tiles of a region are continuous: the region is cut, not separately generated
    recs = {r.id: r for r in ds.records}
    left, right = ds.read_label(recs["w00000_y0000_x0000"]), ds.read_label(recs["w00000_y0000_x0032"])
    assert (left[:, -1] == right[:, 0]).mean() > 0.6


def test_structure_towns_parcels_rivers_wetland():
    rng = np.random.default_rng(0)
    urban = make_landcover(rng, 192, "urban")
    built = urban.codes == BUILT
    assert built.mean() > 0.15
    lab, n = ndimage.label(built)
    sizes = np.bincount(lab.ravel())[1:]
    assert sizes.max() > 0.5 * built.sum()  # built-up is one connected street network, not speckle
    assert (urban.roof > 0).sum() > 0.3 * built.sum() and urban.street.sum() > 0

    farm = make_landcover(np.random.default_rng(1), 192, "farmland")
    crop = farm.codes == CROP
    assert crop.mean() > 0.2 and (farm.parcel[crop] > 0).all()
    ids, counts = np.unique(farm.parcel[crop], return_counts=True)
    assert len(ids) >= 15 and np.median(counts) > 40  # many fields, each a solid block of pixels

    wet = make_landcover(np.random.default_rng(3), 192, "wetland")
    water = wet.codes == WATER
    assert water.mean() > 0.02
    lab, n = ndimage.label(water)
    assert np.bincount(lab.ravel())[1:].max() > 0.3 * water.sum()  # rivers are connected bodies
    assert (wet.codes == WETLAND).mean() > 0.02  # marshes in the wetland biome

    checked = 0
    for seed in range(12):  # outside wetland biomes, wetland only lines the shores
        lc = make_landcover(np.random.default_rng(seed), 128, "forest")
        w, wl = lc.codes == WATER, lc.codes == WETLAND
        if w.any() and wl.any():
            checked += 1
            assert (ndimage.distance_transform_edt(~w)[wl] <= 9).mean() > 0.95
    assert checked >= 3


def test_knobs_change_the_image_in_the_right_direction():
    lc = make_landcover(np.random.default_rng(7), 96, "farmland")

    def r(**kw):
        base = dict(season="summer", sun_elevation=45, haze=0.0, noise=3.0, blur=0.6, jitter=0.0)
        return render(lc, np.random.default_rng(0), **{**base, **kw}).astype(np.float64)

    ref = r()
    assert np.array_equal(ref, r())  # deterministic for a given rng
    hazy = r(haze=0.6)
    assert hazy.mean() > ref.mean() + 20 and hazy.std() < ref.std()
    assert r(sun_elevation=15).mean() < ref.mean() - 10
    noisy = r(noise=20)
    assert np.abs(np.diff(noisy, axis=1)).mean() > np.abs(np.diff(ref, axis=1)).mean() + 5
    veg = np.isin(lc.codes, (TREE, CROP, 30))
    winter, summer = r(season="winter")[veg], ref[veg]
    assert winter[:, 1].mean() - winter[:, 0].mean() < summer[:, 1].mean() - summer[:, 0].mean() - 5  # less green
    assert r(blur=2.0).std() < ref.std()


def test_colour_is_not_enough():
    """The same class looks different across regions; different classes share colours."""
    cfg = WorldConfig(tiles=64, size=32, seed=0, region=2)
    from terrasynth.data.world import generate_region

    tree_means, crop_means = [], []
    for k in range(12):
        _, codes, rgb = generate_region(cfg, k)
        for code, acc in ((TREE, tree_means), (CROP, crop_means)):
            if (codes == code).sum() > 50:
                acc.append(rgb[codes == code].mean(0))
    tree_means, crop_means = np.array(tree_means), np.array(crop_means)
    assert tree_means.std(0).mean() > 8  # regional variation of one class
    assert crop_means[:, 1].std() > 8


def test_interrupted_world_resumes_to_same_bytes(tmp_path, monkeypatch):
    cfg = WorldConfig(tiles=12, size=32, seed=4)
    generate_world(cfg, tmp_path / "ref")
    real, n = DatasetWriter.write, {"k": 0}

    def dying(self, *a, **k):
        n["k"] += 1
        if n["k"] == 7:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(DatasetWriter, "write", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_world(cfg, tmp_path / "run")
    monkeypatch.setattr(DatasetWriter, "write", real)
    with pytest.raises(UserError, match="unfinished"):
        Dataset.open(tmp_path / "run")
    generate_world(cfg, tmp_path / "run")
    assert _files(tmp_path / "run") == _files(tmp_path / "ref")
    with pytest.raises(UserError, match="another config"):
        generate_world(WorldConfig(tiles=12, size=32, seed=5), tmp_path / "run")


def test_cli_world_and_errors(tmp_path, capsys):
    out = tmp_path / "w"
    assert run_cli("-q", "data", "world", "--tiles", "4", "--size", "32", "--season", "winter", "--haze", "0.3",
                   "--out", out, "--preview", tmp_path / "p.png") == 0  # fmt: skip
    assert "4 of 32x32" in capsys.readouterr().out and (tmp_path / "p.png").stat().st_size > 1000
    assert "season: winter" in (out / "config.yaml").read_text()
    assert run_cli("data", "world", "--tiles", "4", "--out", tmp_path / "x", "--set", "haze=2") == 2
    assert run_cli("data", "world", "--tiles", "4", "--out", tmp_path / "x", "--set", "hazy=1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "haze" in err[0] and "unknown key 'hazy'" in err[1]


def test_help_lists_knobs(capsys):
    for cmd, words in ((("data", "world"), ("--season", "--haze", "--workers")),
                       (("data", "import-pairs"), ("--remap", "--split-by", "--resize-to-gsd"))):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            run_cli(*cmd, "--help")
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert all(w in out for w in words), cmd
