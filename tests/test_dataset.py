import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from terrasynth.classes import WORLDCOVER, one_hot
from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.data.torchdata import TileDataset, paired_augment
from terrasynth.errors import UserError


def _info(has_images=True, h="abc"):
    return DatasetInfo(
        name="t", kind="procedural", scheme=WORLDCOVER, tile_size=8, gsd=10.0, has_images=has_images,
        provenance=provenance("test", config_hash=h, seed=0),
    )  # fmt: skip


def _tile(rng):
    return rng.choice([0, 10, 50, 80], size=(8, 8)).astype(np.uint8), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)


def test_round_trip_georeferenced(tmp_path, rng):
    tf = from_origin(500000, 4000080, 10, 10)
    tiles = {}
    with DatasetWriter(tmp_path / "ds", _info()) as w:
        for i in range(3):
            lab, img = _tile(rng)
            tiles[f"t{i}"] = (lab, img)
            w.write(f"t{i}", "train" if i else "test", lab, img, source="s", crs="EPSG:32618", transform=tf)
        ds = w.finalize()
    ds = Dataset.open(tmp_path / "ds")
    assert len(ds) == 3 and ds.info.kind == "procedural" and ds.verify() == []
    for rec in ds.records:
        lab, img = tiles[rec.id]
        assert (ds.read_label(rec) == lab).all() and (ds.read_image(rec) == img).all()
        assert rec.crs == "EPSG:32618" and rec.bounds == (500000.0, 4000000.0, 500080.0, 4000080.0)
        assert rec.counts[10] == int((lab == 10).sum()) and rec.nodata_pixels == int((lab == 0).sum())
    with rasterio.open(ds.root / ds.records[0].label) as src:
        assert src.colormap(1)[10][:3] == (0, 100, 0)  # colour table embedded
        assert src.crs.to_epsg() == 32618 and src.nodata == 0
    meta = json.loads((ds.root / "dataset.json").read_text())
    assert meta["splits"] == {"test": 1, "train": 2} and meta["provenance"]["seed"] == 0


def test_label_only_and_torch_dataset(tmp_path, rng):
    with DatasetWriter(tmp_path / "lo", _info(has_images=False)) as w:
        w.write("a", "train", _tile(rng)[0])
        w.finalize()
    td = TileDataset(tmp_path / "lo", require_images=False)
    item = td[0]
    assert "image" not in item and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) <= {255, 0, 4, 7}
    with pytest.raises(UserError, match="label-only"):
        TileDataset(tmp_path / "lo")


def test_unknown_code_rejected(tmp_path, rng):
    with DatasetWriter(tmp_path / "x", _info()) as w:
        with pytest.raises(UserError, match=r"\[7\]"):
            w.write("a", "train", np.full((8, 8), 7, np.uint8), _tile(rng)[1])


def test_resume_skips_journaled_and_refuses_unfinished(tmp_path, rng):
    out = tmp_path / "r"
    w = DatasetWriter(out, _info())
    lab, img = _tile(rng)
    w.write("a", "train", lab, img)
    w.close()  # killed before finalize
    (out / "labels" / ".tmp-b-xyz.tif").write_bytes(b"partial")  # a writer killed mid-file
    with pytest.raises(UserError, match="unfinished"):
        Dataset.open(out)
    w2 = DatasetWriter(out, _info())
    assert w2.has("a") and not w2.has("b")
    assert not list((out / "labels").glob(".tmp-*"))  # stale temp files cleaned
    w2.write("b", "test", lab, img)
    ds = w2.finalize()
    assert [r.id for r in ds.records] == ["a", "b"]
    with pytest.raises(UserError, match="another config"):
        DatasetWriter(out, _info(h="other"))
    assert DatasetWriter(out, _info()).complete  # same config: nothing to do


def test_augment_is_paired():
    img = torch.arange(2 * 4 * 4).float().reshape(2, 4, 4)
    mask = img[0].long()
    for s in range(8):
        g = torch.Generator().manual_seed(s)
        i2, m2 = paired_augment(img, mask, g)
        assert torch.equal(i2[0].long(), m2)


def test_one_hot_ignores_nodata():
    m = torch.tensor([[[0, 255], [2, 1]]])
    oh = one_hot(m, 3)
    assert oh.shape == (1, 3, 2, 2) and oh[0, :, 0, 1].sum() == 0 and oh[0, 2, 1, 0] == 1


def test_subset_nested_and_linked(tmp_path, rng):
    from terrasynth.data.subset import subset_dataset

    with DatasetWriter(tmp_path / "src", _info()) as w:
        for i in range(20):
            lab, img = _tile(rng)
            w.write(f"t{i:02d}", "test" if i < 5 else "train", lab, img)
        src = w.finalize()
    small = subset_dataset(src, tmp_path / "s25", splits=["train"], fraction=0.25, seed=3)
    big = subset_dataset(src, tmp_path / "s50", splits=["train"], fraction=0.5, seed=3)
    assert len(small) == 4 and len(big) == 8 and {r.split for r in big.records} == {"train"}
    assert {r.id for r in small.records} <= {r.id for r in big.records}
    assert small.verify() == [] and (tmp_path / "s25" / small.records[0].label).stat().st_nlink >= 2
    assert subset_dataset(src, tmp_path / "s25", splits=["train"], fraction=0.25, seed=3).records == small.records
    with pytest.raises(UserError):
        subset_dataset(src, tmp_path / "s25", splits=["train"], fraction=0.5, seed=3)


def test_merge_prefixes_and_keeps_splits(tmp_path, rng):
    from terrasynth.data.subset import merge_datasets

    parts = []
    for split in ("train", "test"):
        with DatasetWriter(tmp_path / split, _info(has_images=False, h=split)) as w:
            for i in range(3):
                w.write(f"s{i}", split, _tile(rng)[0])
            parts.append((f"{split}-", w.finalize()))
    m = merge_datasets(parts, tmp_path / "m")
    assert [r.id for r in m.records] == ["test-s0", "test-s1", "test-s2", "train-s0", "train-s1", "train-s2"]
    assert {r.split for r in m.records if r.id.startswith("train")} == {"train"} and m.verify() == []
    assert not m.info.has_images


# ---- the tests' own tiny-dataset factory (conftest.make_dataset) ---------------------------


@pytest.mark.parametrize("pattern", ["blocks", "blobs", "halves", "regions"])
def test_factory_writes_georeferenced_tiles_in_the_requested_splits(tmp_path, pattern):
    from conftest import TINY_SCHEME, make_dataset
    from terrasynth.classes import load_scheme

    scheme = {"blocks": TINY_SCHEME, "blobs": WORLDCOVER}.get(pattern, load_scheme("dronedeploy"))
    root = make_dataset(tmp_path / "d", n=6, size=16, scheme=scheme, pattern=pattern, splits={"val": 2},
                        paired=pattern != "blobs", gsd=2.0)  # fmt: skip
    ds = Dataset.open(root)
    assert [r.split for r in ds.records] == ["train"] * 4 + ["val"] * 2
    assert ds.info.has_images == (pattern != "blobs") and ds.info.gsd == 2.0
    lefts = []
    for r in ds.records:
        label, crs, tf = ds.read_label_georef(r)
        assert label.shape == (16, 16) and set(np.unique(label).tolist()) <= {*scheme.codes, scheme.nodata}
        assert crs == "EPSG:32633" and tf.a == 2.0 and r.bounds[2] - r.bounds[0] == 32.0
        lefts.append(r.bounds[0])
        if ds.info.has_images:
            assert ds.read_image(r).shape == (16, 16, 3)
    assert lefts == sorted(set(lefts))  # side by side, never on top of each other
    # Same arguments, same pixels: the factory is seeded.
    again = Dataset.open(make_dataset(tmp_path / "e", n=6, size=16, scheme=scheme, pattern=pattern,
                                      splits={"val": 2}, paired=pattern != "blobs", gsd=2.0))  # fmt: skip
    assert all(np.array_equal(ds.read_label(a), again.read_label(b)) for a, b in zip(ds.records, again.records))


def test_merge_takes_the_nodata_code_a_filtered_part_adds(tmp_path):
    """A real part without nodata merged before a filtered synthetic one (nodata 255 added for the
    ignored pixels): the merged scheme knows 255, so every tile reads back."""
    import dataclasses

    from terrasynth.data.subset import merge_datasets
    from conftest import make_dataset
    from terrasynth.classes import load_scheme

    dd = load_scheme("dronedeploy")
    assert dd.nodata is None
    real = make_dataset(tmp_path / "real", n=4, scheme=dd, pattern="regions")
    filt_scheme = dataclasses.replace(dd, nodata=255)
    filt = make_dataset(tmp_path / "filt", n=4, scheme=filt_scheme, pattern="regions", name="f")
    merged = merge_datasets([("r-", real), ("f-", filt)], tmp_path / "m")
    assert merged.scheme.nodata == 255 and merged.scheme.codes == dd.codes
    for rec in merged.records:
        merged.read_label(rec)
