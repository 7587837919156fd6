"""Class schemes: the one source of class ids, names and colours.

A scheme lists its classes as *codes* (the values stored in label rasters, e.g.
WorldCover's 10, 20, ..., 100) and maps them to contiguous *training indices*
0..K-1. The nodata code maps to :data:`IGNORE_INDEX`. ESA WorldCover v200 is built in;
other schemes are small YAML files (``schemes/*.yaml`` ship with the package; any
user's own can be passed by path). A :class:`Remap` maps one scheme's codes onto
another's (e.g. FLAIR onto WorldCover).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import yaml

from terrasynth.errors import UserError
from terrasynth.yamlio import load_yaml

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = 255


def one_hot(mask: "torch.Tensor", num_classes: int) -> "torch.Tensor":
    """(B, H, W) training indices with ``IGNORE_INDEX`` -> (B, K, H, W) float one-hot (ignored pixels all zero)."""
    import torch  # here: reading a class scheme needs no torch

    valid = mask != IGNORE_INDEX
    oh = torch.nn.functional.one_hot(mask.clamp(max=num_classes - 1) * valid, num_classes)
    return (oh * valid.unsqueeze(-1)).permute(0, 3, 1, 2).float()


@dataclass(frozen=True)
class ClassInfo:
    code: int
    name: str
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class ClassScheme:
    """A set of land-cover classes.

    ``classes`` are the real classes in training-index order; ``nodata`` is the code
    (if any) that marks unlabelled pixels and is ignored in training and metrics.
    ``nodata_colour`` is the colour of nodata in RGB-coded masks (and in previews);
    ``extra_nodata_colours`` are further mask colours that also decode to nodata, for
    legends whose masks mark unlabelled pixels in more than one colour (Dubai: grey and
    black).
    """

    name: str
    classes: tuple[ClassInfo, ...]
    nodata: int | None = None
    nodata_colour: tuple[int, int, int] = (0, 0, 0)
    extra_nodata_colours: tuple[tuple[int, int, int], ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        codes = [c.code for c in self.classes]
        if len(set(codes)) != len(codes):
            raise UserError(f"scheme {self.name}: duplicate class codes {codes}; each code must appear once")
        if any(not 0 <= c <= 254 for c in codes):
            raise UserError(f"scheme {self.name}: codes must be 0..254 (uint8 labels), got {codes}")
        if self.nodata is not None and self.nodata in codes:
            raise UserError(f"scheme {self.name}: nodata code {self.nodata} is also a class code")
        if self.extra_nodata_colours and self.nodata is None:
            raise UserError(f"scheme {self.name}: extra_nodata_colours need a nodata code to decode to; set nodata")
        clash = sorted(_hex(c) for c in set(self.extra_nodata_colours) & set(self.colours))
        if clash:
            raise UserError(f"scheme {self.name}: extra_nodata_colours {clash} are also class colours; "
                            "a mask colour must mean one thing: remove them from one list")  # fmt: skip

    # ---- lookups -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def codes(self) -> list[int]:
        return [c.code for c in self.classes]

    @property
    def colours(self) -> list[tuple[int, int, int]]:
        return [c.colour for c in self.classes]

    @cached_property
    def code_to_index_lut(self) -> np.ndarray:
        """(256,) uint8: code -> training index; nodata and unknown codes -> 255."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[c.code] = i
        return lut

    @cached_property
    def index_to_code_lut(self) -> np.ndarray:
        """(256,) uint8: training index -> code; IGNORE_INDEX -> nodata code (or 0)."""
        lut = np.full(256, self.nodata if self.nodata is not None else 0, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[i] = c.code
        return lut

    @cached_property
    def palette(self) -> np.ndarray:
        """(256, 3) uint8: code -> display colour."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        if self.nodata is not None:
            pal[self.nodata] = self.nodata_colour
        for c in self.classes:
            pal[c.code] = c.colour
        return pal

    @property
    def nodata_colours(self) -> list[tuple[int, int, int]]:
        """Every mask colour that decodes to nodata (none without a nodata code)."""
        if self.nodata is None:
            return []
        return [self.nodata_colour, *self.extra_nodata_colours]

    def legend_colours(self) -> set[tuple[int, int, int]]:
        """Every colour an RGB-coded mask of this scheme may hold: class colours and nodata colours."""
        return set(self.colours) | set(self.nodata_colours)

    def valid_codes(self) -> set[int]:
        return set(self.codes) | ({self.nodata} if self.nodata is not None else set())

    def to_indices(self, codes: np.ndarray) -> np.ndarray:
        """Label codes (H, W) -> training indices (H, W) uint8, nodata -> 255."""
        return self.code_to_index_lut[codes]

    def to_codes(self, indices: np.ndarray) -> np.ndarray:
        return self.index_to_code_lut[np.asarray(indices, dtype=np.uint8)]

    def colourize(self, codes: np.ndarray) -> np.ndarray:
        """Label codes (H, W) -> RGB (H, W, 3) uint8 with the scheme's colours."""
        return self.palette[codes]

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """Colour table for a GeoTIFF band (rasterio ``write_colormap``)."""
        cmap = {i: (0, 0, 0, 0) for i in range(256)}
        if self.nodata is not None:
            cmap[self.nodata] = (*self.nodata_colour, 0)
        for c in self.classes:
            cmap[c.code] = (*c.colour, 255)
        return cmap

    def check_codes(self, codes: np.ndarray, where: str) -> None:
        """Raise a one-line error if ``codes`` holds values the scheme does not know."""
        unknown = sorted({int(v) for v in np.unique(codes)} - self.valid_codes())
        if unknown:
            raise UserError(
                f"{where}: label codes {unknown} are not in scheme '{self.name}' "
                f"(known: {sorted(self.valid_codes())}); pass --remap FILE mapping them or choose the right --scheme"
            )

    def colours_to_codes(self, rgb: np.ndarray, where: str) -> np.ndarray:
        """Decode an RGB colour-coded mask (H, W, 3) into codes (H, W); unknown colours are an error."""
        key = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        table = {((r << 16) | (g << 8) | b): c.code for c in self.classes for (r, g, b) in [c.colour]}
        for r, g, b in self.nodata_colours:  # a class colour wins over the (default) nodata colour
            table.setdefault((r << 16) | (g << 8) | b, self.nodata)  # type: ignore[arg-type]
        uniq, inv = np.unique(key.ravel(), return_inverse=True)
        unknown = [u for u in uniq.tolist() if u not in table]
        if unknown:
            shown = ", ".join(f"#{u:06x}" for u in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            raise UserError(
                f"{where}: mask colours {shown} are not in scheme '{self.name}'; "
                "choose the scheme whose legend uses these colours or add them to a scheme file"
            )
        return np.array([table[u] for u in uniq.tolist()], dtype=np.uint8)[inv].reshape(key.shape)

    # ---- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "nodata": self.nodata,
            "nodata_colour": _hex(self.nodata_colour),
        }
        if self.extra_nodata_colours:  # only when used: schemes without them serialise as before
            d["extra_nodata_colours"] = [_hex(c) for c in self.extra_nodata_colours]
        d["classes"] = [{"code": c.code, "name": c.name, "colour": _hex(c.colour)} for c in self.classes]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "scheme") -> "ClassScheme":
        try:
            classes = tuple(
                ClassInfo(int(c["code"]), str(c["name"]), parse_colour(c["colour"], where)) for c in d["classes"]
            )
            return cls(
                name=str(d["name"]), classes=classes, nodata=None if d.get("nodata") is None else int(d["nodata"]),
                nodata_colour=parse_colour(d.get("nodata_colour", "#000000"), where),
                extra_nodata_colours=tuple(parse_colour(c, where) for c in _colour_list(d.get("extra_nodata_colours"))),
                description=str(d.get("description", "")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{where}: invalid scheme definition ({exc!r}); a scheme needs name, classes "
                "[{code, name, colour}] and optional nodata, nodata_colour, extra_nodata_colours"
            ) from exc


def _colour_list(value: Any) -> list[Any]:
    """``extra_nodata_colours``: a list of colours, or one colour written alone."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def parse_colour(value: Any, where: str = "colour") -> tuple[int, int, int]:
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) == 6:
            try:
                return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
            except ValueError:
                pass
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    raise UserError(f"{where}: colour {value!r} is not '#rrggbb' or [r, g, b]; fix it")


WORLDCOVER = ClassScheme(
    name="worldcover",
    description="ESA WorldCover v200 (2021), 10 m, 11 classes",
    nodata=0,
    classes=(
        ClassInfo(10, "Tree cover", (0x00, 0x64, 0x00)),
        ClassInfo(20, "Shrubland", (0xFF, 0xBB, 0x22)),
        ClassInfo(30, "Grassland", (0xFF, 0xFF, 0x4C)),
        ClassInfo(40, "Cropland", (0xF0, 0x96, 0xFF)),
        ClassInfo(50, "Built-up", (0xFA, 0x00, 0x00)),
        ClassInfo(60, "Bare / sparse vegetation", (0xB4, 0xB4, 0xB4)),
        ClassInfo(70, "Snow and ice", (0xF0, 0xF0, 0xF0)),
        ClassInfo(80, "Permanent water bodies", (0x00, 0x64, 0xC8)),
        ClassInfo(90, "Herbaceous wetland", (0x00, 0x96, 0xA0)),
        ClassInfo(95, "Mangroves", (0x00, 0xCF, 0x75)),
        ClassInfo(100, "Moss and lichen", (0xFA, 0xE6, 0xA0)),
    ),
)

BUILTIN: dict[str, ClassScheme] = {"worldcover": WORLDCOVER}


def _shipped(package: str) -> list[str]:
    return sorted(f.name[:-5] for f in resources.files(package).iterdir() if f.name.endswith(".yaml"))


def shipped_schemes() -> list[str]:
    return sorted(set(BUILTIN) | set(_shipped("terrasynth.schemes")))


def load_scheme(name_or_path: str | Path | ClassScheme) -> ClassScheme:
    """A scheme by built-in name (``worldcover``), shipped name (``dronedeploy``) or YAML path."""
    if isinstance(name_or_path, ClassScheme):
        return name_or_path
    key = str(name_or_path)
    if key in BUILTIN:
        return BUILTIN[key]
    shipped = resources.files("terrasynth.schemes").joinpath(f"{key}.yaml")
    if shipped.is_file():
        return ClassScheme.from_dict(load_yaml(shipped.read_text(), f"scheme {key}"), where=f"scheme {key}")
    path = Path(key)
    if path.is_file():
        try:
            data = load_yaml(path.read_text(), str(path))
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: scheme file is not valid YAML; fix the syntax") from exc
        if not isinstance(data, dict):
            raise UserError(f"{path}: scheme file must be a mapping with name and classes")
        return ClassScheme.from_dict(data, where=str(path))
    raise UserError(f"scheme {key!r} not found; use one of {shipped_schemes()} or a path to a scheme YAML file")


@dataclass(frozen=True)
class Remap:
    """Maps every code of ``source`` onto a code of ``target`` (or target's nodata)."""

    source: ClassScheme
    target: ClassScheme
    mapping: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = sorted(self.source.valid_codes() - set(self.mapping))
        if missing:
            raise UserError(f"remap {self.source.name}->{self.target.name}: source codes {missing} are not mapped; "
                            "every source code (and nodata) needs a target")  # fmt: skip
        bad = sorted(set(self.mapping.values()) - self.target.valid_codes())
        if bad:
            raise UserError(f"remap {self.source.name}->{self.target.name}: target codes {bad} are not in scheme "
                            f"'{self.target.name}' (known: {sorted(self.target.valid_codes())})")  # fmt: skip

    @cached_property
    def lut(self) -> np.ndarray:
        """(256,) uint8 lookup; unmapped codes point at 255 so they are caught by check_codes."""
        lut = np.full(256, 255, dtype=np.uint8)
        for s, t in self.mapping.items():
            lut[s] = t
        return lut

    def apply(self, codes: np.ndarray, where: str) -> np.ndarray:
        self.source.check_codes(codes, where)
        return self.lut[codes]


def shipped_remaps() -> list[str]:
    return _shipped("terrasynth.remaps")


def load_remap(name_or_path: str | Path) -> Remap:
    """A remap by shipped name (``flair_to_worldcover``) or YAML path.

    File format::

        source: flair          # scheme name or path
        target: worldcover
        mapping: {1: 50, 2: 50, ...}   # source code -> target code
    """
    key = str(name_or_path)
    shipped = resources.files("terrasynth.remaps").joinpath(f"{key}.yaml")
    if shipped.is_file():
        text, where = shipped.read_text(), f"remap {key}"
    elif Path(key).is_file():
        text, where = Path(key).read_text(), key
    else:
        raise UserError(f"remap {key!r} not found; use one of {shipped_remaps()} or a path to a remap YAML file")
    try:
        data = load_yaml(text, where)
        mapping = {int(k): int(v) for k, v in data["mapping"].items()}
        return Remap(load_scheme(data["source"]), load_scheme(data["target"]), mapping)
    except (KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as exc:
        raise UserError(f"{where}: invalid remap ({exc!r}); it needs source, target and mapping {{code: code}}") from exc
