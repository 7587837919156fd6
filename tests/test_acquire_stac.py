"""STAC sources, offline: a static catalog written with pystac, and a STAC API (the Planetary
Computer's response format) answered by a local server, so pystac-client runs for real and
the COGs are read over HTTP through /vsicurl/."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest

from geo_fixtures import naip_like, serve, worldcover_patch
from terrasynth.data.acquire import AcquireConfig, acquire
from terrasynth.errors import UserError

RECORDED = Path(__file__).parent / "data" / "stac"
PATCH = (6.69, 0.27, 6.77, 0.35)
AREA = (6.70, 0.305, 6.73, 0.335)


@pytest.fixture
def files(shared_data, tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    lc = worldcover_patch(shared_data, PATCH, d / "wc.tif", nodata_box=(slice(360, 400), slice(360, 420)))
    old = worldcover_patch(shared_data, PATCH, d / "wc2020.tif")
    naip_like(lc, d / "naip_like_32n.tif", "EPSG:32632", origin=(244000.5, 37000.25), res=2.0, shape=(1500, 1500))
    naip_like(lc, d / "naip_2019.tif", "EPSG:32632", origin=(244000.5, 37000.25), res=2.0, shape=(1500, 1500))
    return d, lc, old


def _tiles(ds) -> list[tuple]:
    """Tiles as (bounds, label hash, image hash): comparable across sources whose ids differ."""
    out = []
    for rec in ds.records:
        img = ds.read_image(rec) if rec.image else np.zeros(0)
        out.append((rec.bounds, rec.split, hashlib.sha1(ds.read_label(rec)).hexdigest(), hashlib.sha1(np.ascontiguousarray(img)).hexdigest()))
    return sorted(out)


def _pairs_cfg(**kw) -> AcquireConfig:
    return AcquireConfig(product="pairs", bbox=AREA, tile=128, gsd=4.0, max_nodata=0.2, block_size=1500.0, **kw)


def _item(path: Path, collection: str, asset: str, when: str | None, props: dict, bbox) -> pystac.Item:
    w, s, e, n = bbox
    geom = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    dt = datetime.fromisoformat(when).replace(tzinfo=timezone.utc) if when else None
    extra = {} if dt else {"start_datetime": "2021-01-01T00:00:00Z", "end_datetime": "2021-12-31T23:59:59Z"}
    item = pystac.Item(path.stem, geom, list(bbox), dt, {**props, **extra}, collection=collection)
    item.add_asset(asset, pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"]))
    return item


def test_static_catalog_filters_items_and_matches_local_files(files, tmp_path):
    d, lc, old = files
    naip_bbox = (6.69998, 0.30736, 6.72693, 0.33449)
    cat = pystac.Catalog("sao-tome", "NAIP-like imagery and WorldCover over São Tomé")
    for cid, items in {
        "naip": [_item(d / "naip_like_32n.tif", "naip", "image", "2021-09-14", {"naip:state": "st"}, naip_bbox),
                 _item(d / "naip_2019.tif", "naip", "image", "2019-06-01", {"naip:state": "st"}, naip_bbox)],
        "esa-worldcover": [
            _item(lc, "esa-worldcover", "map", None, {"esa_worldcover:product_version": "2.0.0"}, PATCH),
            _item(old, "esa-worldcover", "map", None, {"esa_worldcover:product_version": "1.0.0"}, PATCH)],
    }.items():  # fmt: skip
        coll = pystac.Collection(cid, cid, pystac.Extent(pystac.SpatialExtent([list(PATCH)]),
                                                         pystac.TemporalExtent([[None, None]])))  # fmt: skip
        coll.add_items(items)
        cat.add_child(coll)
    cat.normalize_hrefs(str(tmp_path / "catalog"))
    cat.make_all_asset_hrefs_relative()
    cat.save(pystac.CatalogType.SELF_CONTAINED)

    ds = acquire(_pairs_cfg(source="static", catalog=str(tmp_path / "catalog" / "catalog.json"),
                            datetime="2021-01-01/2022-12-31"), tmp_path / "static")  # fmt: skip
    used = json.loads((tmp_path / "static" / "dataset.json").read_text())["extra"]["stac_items"]
    assert [i["id"] for i in used["imagery"]] == ["naip_like_32n"]  # the 2019 scene is outside the dates
    assert [i["id"] for i in used["landcover"]] == ["wc"]  # version 1.0.0 (2020) is not the 2021 map
    local = acquire(_pairs_cfg(source="local", landcover=[str(lc)], imagery=[str(d / "naip_like_32n.tif")]),
                    tmp_path / "local")  # fmt: skip
    assert len(ds) > 3 and _tiles(ds) == _tiles(local)


@pytest.mark.parametrize("source", ["stac", "planetary-computer"])
def test_stac_api_search_from_recorded_responses_reads_cogs_over_http(files, tmp_path, source):
    d, lc, _ = files
    recorded = {c: json.loads((RECORDED / f"search-{c}.json").read_text()) for c in ("naip", "esa-worldcover")}
    bodies = []

    def search(body):
        bodies.append(body)
        return recorded[body["collections"][0]]

    with serve(tmp_path) as srv:
        srv.routes = {"/": lambda body: json.loads((RECORDED / "landing.json").read_text()), "/search": search}
        cfg = _pairs_cfg(source=source, stac_url=srv.base, datetime="2021-01-01/2022-12-31", state="st")
        ds = acquire(cfg, tmp_path / "api")
    by_coll = {b["collections"][0]: b for b in bodies}
    assert by_coll["naip"]["bbox"] == list(AREA) and by_coll["naip"]["query"] == {"naip:state": {"eq": "st"}}
    assert by_coll["naip"]["datetime"].startswith("2021-01-01")
    assert by_coll["esa-worldcover"]["query"] == {"esa_worldcover:product_version": {"eq": "2.0.0"}}
    cogs = [(m, p, r) for m, p, r, _ in srv.log if p.startswith("/files/")]
    assert cogs and all(r is not None for m, p, r in cogs if m == "GET")  # range reads only
    meta = json.loads((tmp_path / "api" / "dataset.json").read_text())
    assert meta["extra"]["stac_items"]["imagery"][0]["id"] == "st_m_0000645_ne_32_020_20210914"
    assert meta["extra"]["stac_items"]["landcover"][0]["item"].endswith("ESA_WorldCover_10m_2021_v200_N00E006")
    assert meta["provenance"]["source"] == f"acquire:{source}"
    local = acquire(_pairs_cfg(source="local", landcover=[str(lc)], imagery=[str(d / "naip_like_32n.tif")]),
                    tmp_path / "local")  # fmt: skip
    assert _tiles(ds) == _tiles(local)


def test_no_items_for_the_area_is_a_one_line_error(tmp_path):
    empty = {"type": "FeatureCollection", "features": [], "links": []}
    with serve(tmp_path) as srv:
        srv.routes = {"/": lambda body: json.loads((RECORDED / "landing.json").read_text()),
                      "/search": lambda body: empty}  # fmt: skip
        with pytest.raises(UserError, match="no 'naip' items"):
            acquire(_pairs_cfg(source="stac", stac_url=srv.base), tmp_path / "none")
