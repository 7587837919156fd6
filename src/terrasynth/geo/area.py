"""The area to acquire: a bbox, a GeoJSON file or a named preset, always in EPSG:4326."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terrasynth.errors import UserError

Bounds = tuple[float, float, float, float]  # west, south, east, north (EPSG:4326)

# Named areas: bbox plus, for STAC searches, a filter on item properties where the
# collection has one (NAIP's state). New York State's extent from the US Census TIGER states.
PRESETS: dict[str, dict[str, Any]] = {
    "new-york": {"bbox": (-79.7624, 40.4774, -71.7517, 45.0159), "naip_state": "ny"},
    "sao-tome": {"bbox": (6.45, 0.0, 6.77, 0.42), "naip_state": None},
}


@dataclass(frozen=True)
class Area:
    bbox: Bounds
    geometry: dict[str, Any] | None = None  # GeoJSON geometry for STAC `intersects`, when given
    name: str = "bbox"
    naip_state: str | None = None

    def clip_shape(self) -> Any:
        """The (multi)polygon tiles are clipped to, as a prepared shapely geometry; None for a bbox.

        A tile belongs to the area when its centre lies inside: adjacent area files then
        share no tile and leave none out between them.
        """
        if self.geometry is None:
            return None
        import shapely
        from shapely.geometry import shape

        try:
            geom = shape(self.geometry)
        except (AttributeError, KeyError, TypeError, ValueError, shapely.errors.GEOSException) as exc:
            raise UserError(f"{self.name}: unreadable area geometry ({exc}); give Polygon/MultiPolygon GeoJSON") from exc
        polys = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
        if not polys or sum(g.area for g in polys) == 0:
            raise UserError(f"{self.name}: the area file holds no polygon with an area; give a Polygon or "
                            "MultiPolygon in EPSG:4326 (points and lines enclose nothing)")  # fmt: skip
        clip = shapely.make_valid(shapely.union_all(polys))
        shapely.prepare(clip)
        return clip


def intersects(a: Bounds, b: Bounds) -> bool:
    """Whether two bounds share an area (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def parse_bbox(text: str | tuple | list, where: str = "--bbox") -> Bounds:
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        w, s, e, n = (float(p) for p in parts)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where} {text!r}: expected W,S,E,N in degrees (EPSG:4326), e.g. 6.45,0.0,6.77,0.42") from exc
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise UserError(f"{where} {text!r}: need -180 <= W < E <= 180 and -90 <= S < N <= 90 (EPSG:4326 degrees)")
    return (w, s, e, n)


def _coords(geom: dict[str, Any]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []

    def walk(c: Any) -> None:
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            out.append((float(c[0]), float(c[1])))
        elif isinstance(c, (list, tuple)):
            for x in c:
                walk(x)

    if geom.get("type") == "GeometryCollection":
        for g in geom.get("geometries", []):
            out.extend(_coords(g))
    else:
        walk(geom.get("coordinates"))
    return out


def read_area_file(path: str | Path) -> Area:
    """A GeoJSON Feature, FeatureCollection or geometry (EPSG:4326): its bbox and geometry."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: area file not found; pass a GeoJSON file to --area-file")
    try:
        gj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid GeoJSON ({exc}); fix the file") from exc
    if gj.get("type") == "FeatureCollection":
        geoms = [f.get("geometry") or {} for f in gj.get("features", [])]
        geom = {"type": "GeometryCollection", "geometries": geoms} if len(geoms) != 1 else geoms[0]
    elif gj.get("type") == "Feature":
        geom = gj.get("geometry") or {}
    else:
        geom = gj
    pts = _coords(geom)
    if not pts:
        raise UserError(f"{path}: no coordinates found; give a Polygon/MultiPolygon GeoJSON in EPSG:4326")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    bbox = parse_bbox((min(xs), min(ys), max(xs), max(ys)), where=str(path))
    return Area(bbox, geometry=geom, name=path.stem)


def resolve_area(bbox: str | tuple | None, area_file: str | None, area: str | None) -> Area | None:
    """The one area the user gave (None: the whole extent of the local sources)."""
    given = [x for x in (bbox, area_file, area) if x]
    if len(given) > 1:
        raise UserError("give only one of --bbox, --area-file and --area")
    if bbox:
        return Area(parse_bbox(bbox))
    if area_file:
        return read_area_file(area_file)
    if area:
        if area not in PRESETS:
            raise UserError(f"--area {area!r}: unknown preset; choose one of {', '.join(PRESETS)} or use --bbox")
        p = PRESETS[area]
        return Area(tuple(p["bbox"]), name=area, naip_state=p["naip_state"])  # type: ignore[arg-type]
    return None
