"""`data acquire --product landcover` on the real WorldCover tile (windowed reads only)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from conftest import run_cli
from terrasynth.data.acquire import AcquireConfig, acquire
from terrasynth.data.dataset import Dataset, DatasetWriter
from terrasynth.geo.tiling import SpatialBlocks

WC2021 = "worldcover/ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"
BBOX = (6.70, 0.28, 6.76, 0.34)  # 720 x 720 px of the east coast of São Tomé: forest, town, ocean


def _cfg(shared_data, **kw) -> AcquireConfig:
    base = dict(source="local", product="landcover", landcover=[str(shared_data / WC2021)], bbox=BBOX, tile=64,
                block_size=2000.0, max_nodata=0.0)  # fmt: skip
    return AcquireConfig(**{**base, **kw})


def test_native_tiles_equal_windowed_source_reads_and_splits_are_block_disjoint(shared_data, tmp_path):
    ds = acquire(_cfg(shared_data), tmp_path / "lc")
    assert ds.info.kind == "real" and ds.info.has_images is False and ds.info.scheme.name == "worldcover"
    stats = json.loads((tmp_path / "lc" / "dataset.json").read_text())["extra"]["stats"]
    assert len(ds) == stats["candidates"] >= 121, "native tiles on a geographic grid line up with the blocks"
    assert {r.split for r in ds.records} == {"train", "val", "test"}
    assert ds.verify() == []
    sp = json.loads((tmp_path / "lc" / "dataset.json").read_text())["extra"]["splits"]
    blocks = SpatialBlocks(sp["block_size_deg"], origin=tuple(sp["block_origin"]))
    block_split: dict[tuple[int, int], set[str]] = defaultdict(set)
    with rasterio.open(shared_data / WC2021) as src:
        for rec in ds.records[::5]:
            lab = ds.read_label(rec)
            win = from_bounds(*rec.bounds, transform=src.transform)
            assert win.col_off == pytest.approx(round(win.col_off), abs=1e-6)  # native lattice, no resampling
            ref = src.read(1, window=win.round_offsets().round_lengths())
            np.testing.assert_array_equal(lab, ref)
            counts = np.bincount(lab.ravel(), minlength=256)
            assert all(rec.counts[c] == counts[c] for c in rec.counts)
    for rec in ds.records:
        (cell,) = blocks.cells([rec.bounds[0]], [rec.bounds[1]], [rec.bounds[2]], [rec.bounds[3]])
        assert cell is not None, "a tile crosses a block edge"
        block_split[cell].add(rec.split)
    assert all(len(s) == 1 for s in block_split.values()), "a block holds tiles of two splits"
    meta = json.loads((tmp_path / "lc" / "dataset.json").read_text())
    assert meta["extra"]["stac_items"]["landcover"][0]["href"].endswith(WC2021.split("/")[1])
    assert meta["extra"]["stats"]["kept"] == len(ds)


def test_class_fraction_filter_drops_ocean_tiles(shared_data, tmp_path):
    ds = acquire(_cfg(shared_data, max_class_fraction={"0+80": 0.5}), tmp_path / "land")
    full = acquire(_cfg(shared_data), tmp_path / "all")
    assert 0 < len(ds) < len(full)
    for rec in ds.records:
        assert (rec.counts[80] + rec.nodata_pixels) / 64**2 <= 0.5
    assert any(r.counts[80] / 64**2 > 0.5 for r in full.records)


def test_killed_run_resumes_to_the_same_dataset(shared_data, tmp_path, monkeypatch):
    clean = acquire(_cfg(shared_data), tmp_path / "clean")
    real_write, calls = DatasetWriter.write, {"n": 0}

    def dying_write(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real_write(self, *a, **k)

    monkeypatch.setattr(DatasetWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        acquire(_cfg(shared_data), tmp_path / "killed")
    monkeypatch.setattr(DatasetWriter, "write", real_write)
    with pytest.raises(Exception):
        Dataset.open(tmp_path / "killed")  # unfinished: readers refuse it
    resumed = acquire(_cfg(shared_data, workers=1), tmp_path / "killed")
    assert (tmp_path / "killed" / "index.csv").read_text() == (tmp_path / "clean" / "index.csv").read_text()
    for a, b in zip(clean.records, resumed.records):
        np.testing.assert_array_equal(clean.read_label(a), resumed.read_label(b))


def test_reprojected_utm_grid_keeps_only_source_codes(shared_data, tmp_path):
    ds = acquire(_cfg(shared_data, gsd=20.0, tile=32, block_size=1500.0, max_nodata=1.0), tmp_path / "utm")
    assert {r.crs for r in ds.records} == {"EPSG:32632"}  # UTM zone of lon 6.6
    with rasterio.open(shared_data / WC2021) as src:
        w = from_bounds(*BBOX, transform=src.transform).round_offsets().round_lengths()
        src_codes = set(np.unique(src.read(1, window=w)).tolist())
    for rec in ds.records:
        lab = ds.read_label(rec)
        assert set(np.unique(lab).tolist()) <= src_codes | {0}
        crs, tr = ds.read_label_georef(rec)[1:]
        assert tr.a == 20.0 and tr.c % 20 == 0 and tr.f % 20 == 0  # snapped to the global 20 m lattice


def test_tile_cap_and_workers_give_the_same_tiles(shared_data, tmp_path):
    one = acquire(_cfg(shared_data, max_tiles=12), tmp_path / "one")
    two = acquire(_cfg(shared_data, max_tiles=12, workers=2), tmp_path / "two")
    assert len(one) == 12 and [r.id for r in one.records] == [r.id for r in two.records]


def test_cli_landcover_and_one_line_errors(shared_data, tmp_path, capsys):
    wc = shared_data / WC2021
    rc = run_cli("data", "acquire", "--source", "local", "--landcover", wc, "--product", "landcover", "--tile", "64",
                 "--bbox", "6.70,0.28,6.76,0.34", "--max-class-fraction", "80:0.5", "--block-size", "2000",
                 "--out", tmp_path / "cli")  # fmt: skip
    assert rc == 0 and Dataset.open(tmp_path / "cli").info.has_images is False
    capsys.readouterr()
    cases = [
        ["--landcover", tmp_path / "missing.tif", "--bbox", "6.70,0.28,6.76,0.34"],
        ["--landcover", wc, "--bbox", "20,20,21,21"],  # no overlap
        ["--landcover", wc, "--bbox", "6.66,0.3,6.6,0.36"],  # W > E
        ["--landcover", wc, "--max-class-fraction", "85:0.5"],  # not a WorldCover code
    ]
    for extra in cases:
        rc = run_cli("data", "acquire", "--product", "landcover", "--tile", "64", *extra, "--out", tmp_path / "bad")
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, (extra, err)


def test_shipped_configs_load_and_the_tiny_twin_runs(shared_data, tmp_path):
    from terrasynth.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    ny = load_config(AcquireConfig, root / "acquire-new-york.yaml")
    assert ny.source == "planetary-computer" and ny.area == "new-york" and ny.tile == 512
    rc = run_cli("data", "acquire", "--config", root / "acquire-sao-tome.yaml", "--landcover", shared_data / WC2021,
                 "--bbox", "6.70,0.28,6.76,0.34", "--out", tmp_path / "twin")  # fmt: skip
    ds = Dataset.open(tmp_path / "twin")
    assert rc == 0 and len(ds) > 10 and all((r.counts[80] + r.nodata_pixels) / 64**2 <= 0.5 for r in ds.records)


def test_area_file_and_presets(tmp_path):
    from terrasynth.errors import UserError
    from terrasynth.geo.area import resolve_area

    gj = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[6.5, 0.1], [6.7, 0.1], [6.7, 0.3], [6.5, 0.1]]]}}]}  # fmt: skip
    (tmp_path / "a.geojson").write_text(json.dumps(gj))
    a = resolve_area(None, str(tmp_path / "a.geojson"), None)
    assert a.bbox == (6.5, 0.1, 6.7, 0.3) and a.geometry["type"] == "Polygon"
    ny = resolve_area(None, None, "new-york")
    assert ny.naip_state == "ny" and ny.bbox[0] < -79 and ny.bbox[2] > -72
    for bad in [("1,2,3", None, None), (None, str(tmp_path / "none.json"), None), (None, None, "atlantis"),
                ("1,2,3,4", None, "new-york")]:  # fmt: skip
        with pytest.raises(UserError):
            resolve_area(*bad)


def test_stride_and_shift_edge_rule_cover_the_area(shared_data, tmp_path):
    ds = acquire(_cfg(shared_data, tile=96, stride=64, edge="shift", block_size=1e6), tmp_path / "shift")
    meta = json.loads((tmp_path / "shift" / "dataset.json").read_text())
    assert meta["extra"]["tiling"] == {"tile": 96, "stride": 64, "edge": "shift"}
    w = max(r.bounds[2] for r in ds.records) - min(r.bounds[0] for r in ds.records)
    h = max(r.bounds[3] for r in ds.records) - min(r.bounds[1] for r in ds.records)
    assert w == pytest.approx(meta["extra"]["scenes"][0]["width"] / 12000) and h == pytest.approx(
        meta["extra"]["scenes"][0]["height"] / 12000)  # the shifted last tiles reach the grid's edges


def test_area_file_clips_tiles_to_its_polygon(shared_data, tmp_path):
    """--area-file keeps the tiles whose centre lies inside the polygon, not the whole bbox:
    the result is the bbox run's tiles filtered by centre, and two halves of a split area
    share no tile and lose none."""
    import shapely
    from shapely.geometry import Polygon, box, mapping

    w, s, e, n = BBOX
    # a cut across the bbox at an odd slope, so that no tile centre lies on it
    tri = Polygon([(w, s), (e, s), (e, s + 0.0213), (w + 0.0237, n), (w, n)])
    other = box(w, s, e, n).difference(tri)  # the rest of the bbox
    runs = {}
    for name, geom in (("tri", tri), ("other", other)):
        f = tmp_path / f"{name}.geojson"
        f.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(geom)}))
        rc = run_cli("data", "acquire", "--source", "local", "--product", "landcover", "--landcover",
                     shared_data / WC2021, "--area-file", f, "--tile", "64", "--block-size", "2000",
                     "--max-nodata", "0", "--out", tmp_path / name)  # fmt: skip
        assert rc == 0
        runs[name] = Dataset.open(tmp_path / name)
    # reference: every tile of a larger bbox, filtered by centre (the global tile lattice is shared)
    full = acquire(_cfg(shared_data, bbox=(w - 0.01, s - 0.01, e + 0.01, n + 0.01)), tmp_path / "bbox")
    centre = {r.id: ((r.bounds[0] + r.bounds[2]) / 2, (r.bounds[1] + r.bounds[3]) / 2) for r in full.records}
    got = {k: {r.id for r in ds.records} for k, ds in runs.items()}
    for k, geom in (("tri", tri), ("other", other)):
        assert got[k] == {i for i, (x, y) in centre.items() if shapely.contains_xy(geom, x, y)}
    assert got["tri"] and got["other"]
    meta = json.loads((tmp_path / "tri" / "dataset.json").read_text())["extra"]
    assert meta["stats"]["outside_area"] > 0 and meta["area"]["clip"].startswith("tile centre")
    # the two halves partition the bbox's tiles: none shared, none lost
    in_box = {i for i, (x, y) in centre.items() if shapely.contains_xy(box(w, s, e, n), x, y)}
    assert not (got["tri"] & got["other"]) and got["tri"] | got["other"] == in_box


def test_area_file_without_a_polygon_is_a_one_line_error(shared_data, tmp_path, capsys):
    f = tmp_path / "line.geojson"
    f.write_text(json.dumps({"type": "LineString", "coordinates": [[6.70, 0.28], [6.76, 0.34]]}))
    rc = run_cli("data", "acquire", "--source", "local", "--product", "landcover", "--landcover",
                 shared_data / WC2021, "--area-file", f, "--tile", "64", "--out", tmp_path / "out")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no polygon" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "dataset.json").exists()


DRCOG2018 = "landcover-1m/drcog/DRCOG_2018_LULC_E3220000_N1710000.tif"


def test_drcog_1m_in_feet_remapped_onto_worldcover(shared_data, tmp_path):
    """A 1 m land cover in its own scheme and a US-feet CRS: native tiles are the source window through the remap."""
    from terrasynth.classes import load_remap

    remap = load_remap("drcog_to_worldcover")
    bbox = (-104.690, 39.840, -104.684, 39.846)  # about 510 x 670 m at Denver airport: runways, buildings, grass
    cfg = AcquireConfig(source="local", product="landcover", landcover=[str(shared_data / DRCOG2018)], bbox=bbox,
                        tile=64, block_size=200.0, max_nodata=0.0, remap="drcog_to_worldcover")  # fmt: skip
    ds = acquire(cfg, tmp_path / "drcog")
    assert len(ds) >= 20 and ds.info.scheme.name == "worldcover"
    seen: set[int] = set()
    with rasterio.open(shared_data / DRCOG2018) as src:
        assert src.crs.linear_units.lower().startswith("us survey foot")
        for rec in ds.records:
            lab = ds.read_label(rec)
            win = from_bounds(*rec.bounds, transform=src.transform).round_offsets().round_lengths()
            np.testing.assert_array_equal(lab, remap.lut[src.read(1, window=win)])
            seen |= set(np.unique(lab).tolist())
    assert {30, 50} <= seen <= {10, 30, 40, 50, 60, 80}  # grass and built-up at the airport; no DRCOG code leaks
