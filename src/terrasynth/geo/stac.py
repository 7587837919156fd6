"""Finding source rasters in STAC: an API (pystac-client; Planetary Computer signing) or a
static catalog on disk (pystac). Both yield :class:`SourceItem`: an href to read plus the
item's identity, recorded in ``dataset.json`` for provenance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from terrasynth.errors import UserError
from terrasynth.geo.area import Area, intersects

log = logging.getLogger(__name__)

PLANETARY_COMPUTER = "https://planetarycomputer.microsoft.com/api/stac/v1"


@dataclass(frozen=True)
class SourceItem:
    """One raster to read: ``href`` (path or URL, signed if needed) and where it came from."""

    href: str
    id: str
    collection: str | None = None
    datetime: str | None = None
    bbox: tuple[float, ...] | None = None
    properties: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    self_href: str | None = None

    def record(self) -> dict[str, Any]:
        """The provenance entry: item id, collection, date, bbox, and the href without its signature."""
        return {
            "id": self.id, "collection": self.collection, "datetime": self.datetime,
            "bbox": list(self.bbox) if self.bbox else None, "href": self.href.split("?")[0],
            "item": self.self_href,
        }  # fmt: skip


class ItemSearcher(Protocol):
    def items(
        self, collection: str, asset: str, area: Area, datetime: str | None, props: dict[str, Any], limit: int | None
    ) -> list[SourceItem]: ...


def pc_sign(href: str) -> str:
    """Sign a Planetary Computer blob URL (cached SAS token, renewed when it expires)."""
    import planetary_computer

    return planetary_computer.sign_url(href)


def _to_source(item: Any, asset: str, href: str | None = None) -> SourceItem:
    if asset not in item.assets:
        raise UserError(
            f"STAC item {item.id}: has no asset '{asset}' (assets: {', '.join(item.assets)}); pass the right --*-asset"
        )
    dt = item.properties.get("datetime") or item.properties.get("start_datetime")
    return SourceItem(
        href=href or item.assets[asset].get_absolute_href() or item.assets[asset].href, id=item.id,
        collection=item.collection_id, datetime=dt, bbox=tuple(item.bbox) if item.bbox else None,
        properties=dict(item.properties), self_href=item.get_self_href(),
    )  # fmt: skip


def _matches(item: Any, props: dict[str, Any]) -> bool:
    return all(str(item.properties.get(k, "")).lower() == str(v).lower() for k, v in props.items())


def _in_dates(item: Any, datetime: str | None) -> bool:
    """Whether the item's date falls in ``datetime`` ('YYYY-MM-DD/YYYY-MM-DD', open ends '..')."""
    if not datetime:
        return True
    dt = (item.properties.get("datetime") or item.properties.get("start_datetime") or "")[:10]
    lo, _, hi = datetime.partition("/")
    hi = hi or lo
    return (lo in ("", "..") or dt >= lo[:10]) and (hi in ("", "..") or dt <= hi[:10])


class StaticCatalog:
    """A STAC catalog or collection on disk, walked with pystac; filtering done here."""

    def __init__(self, path: str | Path):
        import pystac

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: STAC catalog not found; pass the catalog.json (or collection.json) to --catalog")
        try:
            self.root = pystac.read_file(str(self.path))
        except Exception as exc:  # pystac raises several types for a broken file
            raise UserError(f"{self.path}: not a readable STAC catalog ({exc}); fix or regenerate it") from exc
        if not isinstance(self.root, pystac.Catalog):
            raise UserError(f"{self.path}: is a STAC {type(self.root).__name__}, not a catalog or collection")

    def items(self, collection, asset, area, datetime, props, limit):
        out = []
        for item in self.root.get_items(recursive=True):
            if item.collection_id not in (None, collection):
                continue
            overlaps = item.bbox is not None and intersects(item.bbox, area.bbox)
            if overlaps and _in_dates(item, datetime) and _matches(item, props):
                out.append(_to_source(item, asset))
                if limit and len(out) >= limit:
                    break
        return sorted(out, key=lambda s: s.id)


class ApiSearch:
    """A STAC API searched with pystac-client; Planetary Computer hrefs are signed (SAS tokens)."""

    def __init__(self, url: str, sign: bool = False):
        self.url, self.sign = url, sign
        self._client = None

    def client(self) -> Any:
        if self._client is None:
            import pystac_client
            from pystac_client.exceptions import APIError

            modifier = None
            if self.sign:
                import planetary_computer

                modifier = planetary_computer.sign_inplace
            try:
                self._client = pystac_client.Client.open(self.url, modifier=modifier)
            except (APIError, OSError, ValueError) as exc:
                raise UserError(f"{self.url}: cannot open the STAC API ({exc}); check the URL and the network") from exc
        return self._client

    def items(self, collection, asset, area, datetime, props, limit):
        from pystac_client.exceptions import APIError

        kw: dict[str, Any] = {"collections": [collection], "max_items": limit}
        if area.geometry is not None:
            kw["intersects"] = area.geometry
        else:
            kw["bbox"] = list(area.bbox)
        if datetime:
            kw["datetime"] = datetime
        if props:
            kw["query"] = {k: {"eq": v} for k, v in props.items()}
        try:
            found = list(self.client().search(**kw).items())
        except (APIError, OSError) as exc:
            raise UserError(f"{self.url}: STAC search for '{collection}' failed ({exc}); check the network and filters") from exc
        # Servers without the query extension ignore `query`: filter again here.
        out = [_to_source(it, asset) for it in found if _matches(it, props)]
        log.info("%s: %d '%s' items", self.url, len(out), collection)
        return sorted(out, key=lambda s: s.id)
