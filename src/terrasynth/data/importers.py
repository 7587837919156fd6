"""Import image/mask pairs (PNG, JPEG, TIFF) into a terrasynth dataset.

Partners are matched by file stem (``a.png`` in IMAGES with ``a.png`` in MASKS; common
``_mask``/``_label``/``_image`` style suffixes and prefixes are tolerated when that
matching is unambiguous). Masks are single-band class codes or RGB colour-coded with the
scheme's legend. Each pair is optionally resampled to a target ground sample distance,
cut into ``tile`` x ``tile`` tiles (edge tiles that do not fit are dropped), and every
tile is given a split so that no two splits share pixels: per source image, per spatial
block of ``block_size`` pixels for large scenes (tiles never cross blocks), or per *group*
of images named by a regex on the file stem (a region, a site, a campaign), so that val and
test hold whole regions never seen in training.

Everything the user can get wrong (no images, a missing partner, a size mismatch, an
unreadable file, unknown codes or colours) is checked before the first tile is written.
"""

from __future__ import annotations

import glob
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import numpy as np
import rasterio
from PIL import Image, UnidentifiedImageError
from pydantic import Field, field_validator, model_serializer, model_validator
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm import tqdm

from terrasynth import budget
from terrasynth.classes import ClassScheme, Remap, load_remap, load_scheme
from terrasynth.config import Seed, StrictModel, config_dict, config_hash, save_resolved
from terrasynth.data.dataset import META_FILE, PARTIAL_FILE, Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.data.splits import SplitRatios, assign_splits, split_counts_for
from terrasynth.data.tile_sink import ThreadedWrites
from terrasynth.errors import UserError

log = logging.getLogger(__name__)

Band = Annotated[int, Field(ge=1, le=64)]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Decorations that image/mask file names commonly carry; stripped only to pair files.
_DECORATION = re.compile(
    r"(^(mask|masks|label|labels|gt|img|image|images|rgb)[_\-.])|([_\-.](mask|masks|label|labels|lbl|gt|seg|"
    r"segmentation|img|image|rgb|sat|ortho)$)",
    re.IGNORECASE,
)


class GroupSplits(StrictModel):
    """Groups (regions) named for val and test; every other group is train."""

    val: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> "GroupSplits":
        both = sorted(set(self.val) & set(self.test))
        if both:
            raise ValueError(f"group(s) {both} are in both val and test; a group belongs to one split")
        return self


class PairImportConfig(StrictModel):
    """How ``terrasynth data import-pairs`` turns image/mask pairs into a dataset."""

    scheme: str = Field("worldcover", description="scheme of the masks: built-in/shipped name or YAML path")
    remap: str | None = Field(None, description="remap onto another scheme (e.g. flair_to_worldcover); its "
                                                "target becomes the dataset's scheme")  # fmt: skip
    tile: int = Field(64, ge=8, le=4096, description="tile size in pixels (after resampling)")
    stride: int | None = Field(None, ge=1, description="step between tiles; default = tile (no overlap)")
    gsd: float | None = Field(None, gt=0, description="ground sample distance of the source images, m/px")
    resize_to_gsd: float | None = Field(None, gt=0, description="resample to this GSD (m/px); needs gsd")
    split_by: Literal["image", "block", "group"] = "image"
    block_size: int = Field(512, ge=8, description="side of a split block in pixels (split_by=block)")
    group_pattern: str | None = Field(None, description="split_by=group: regex searched in each image's file stem; "
                                      "its first capture group (or the whole match) names the image's group")  # fmt: skip
    groups: GroupSplits | None = Field(None, description="split_by=group: groups for val and test (the rest train; "
                                       "ratios and seed are then unused); default: whole groups drawn with ratios "
                                       "and seed")  # fmt: skip
    ratios: SplitRatios = Field(default_factory=SplitRatios)
    seed: Seed = 0
    max_nodata: float = Field(1.0, ge=0.0, le=1.0, description="drop tiles whose nodata share exceeds this")
    mask_format: Literal["auto", "index", "rgb"] = "auto"
    bands: tuple[Band, Band, Band] | None = Field(
        None, description="1-based source band for R, G and B, e.g. [1, 1, 1] for grey or [3, 2, 1] for BGR; "
        "default: the first three, band 1 copied (with a warning) for one- and two-band images"
    )  # fmt: skip

    @field_validator("group_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc}); e.g. '^(tile\\d+)_' names tile3 in tile3_part1")
        return v

    @model_validator(mode="after")
    def _check(self) -> "PairImportConfig":
        if self.resize_to_gsd is not None and self.gsd is None:
            raise ValueError("resize_to_gsd needs gsd (the source images' GSD in m/px); pass --gsd")
        if self.split_by == "block" and self.block_size < self.tile:
            raise ValueError(f"block_size {self.block_size} is smaller than tile {self.tile}; raise block_size")
        if self.split_by == "group" and self.group_pattern is None:
            raise ValueError("split_by=group needs group_pattern, a regex whose first capture group names an "
                             "image's group, e.g. '^(tile\\d+)_'; pass --group-pattern")  # fmt: skip
        if self.split_by != "group" and (self.group_pattern is not None or self.groups is not None):
            raise ValueError(f"group_pattern and groups are used only with split_by=group (split_by is "
                             f"{self.split_by}); set split_by: group or remove them")  # fmt: skip
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_groups(self, handler: Any) -> dict[str, Any]:
        # Unset group options are left out of the dump, so the config hashes of imports and pipeline
        # runs that do not split by group are what they were before these options existed.
        d = handler(self)
        for k in ("group_pattern", "groups"):
            if d.get(k, "") is None:
                del d[k]
        return d

    @property
    def step(self) -> int:
        return self.stride or self.tile

    @property
    def scale(self) -> float:
        """Resampling factor applied to the source pixels (1.0 = none)."""
        if self.resize_to_gsd is None or self.gsd is None:
            return 1.0
        return self.gsd / self.resize_to_gsd


@dataclass(frozen=True)
class Pair:
    name: str  # tile-id prefix, unique
    image: Path
    mask: Path


# ---- finding and pairing files --------------------------------------------------------


def list_images(spec: str | Path, what: str) -> list[Path]:
    """Files of a directory (non-recursive) or a glob pattern, sorted; only image suffixes."""
    spec = str(spec)
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file()]
    elif any(ch in spec for ch in "*?["):
        files = [Path(f) for f in glob.glob(spec) if Path(f).is_file()]
    elif p.is_file():
        files = [p]
    else:
        raise UserError(f"{spec}: {what} not found; pass a directory or a glob such as '{spec}/*.png'")
    files = sorted(f for f in files if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{spec}: no {what} found (looked for {', '.join(IMAGE_SUFFIXES)}); check the path")
    return files


def _strip(stem: str) -> str:
    prev = None
    while prev != stem:
        prev, stem = stem, _DECORATION.sub("", stem)
    return stem


def pair_files(images: list[Path], masks: list[Path]) -> list[Pair]:
    """Match every image to its mask by stem; tolerated decorations only when unambiguous."""
    by_stem = {}
    for m in masks:
        if m.stem in by_stem:
            raise UserError(f"{m}: two masks share the stem '{m.stem}' ({by_stem[m.stem].name}); keep one")
        by_stem[m.stem] = m
    by_key: dict[str, list[Path]] = {}
    for m in masks:
        by_key.setdefault(_strip(m.stem), []).append(m)
    pairs, used = [], set()
    for im in images:
        mask = by_stem.get(im.stem)
        if mask is None:
            cands = by_key.get(_strip(im.stem), [])
            if len(cands) > 1:
                raise UserError(
                    f"{im}: several masks could be its partner ({', '.join(c.name for c in cands)}); "
                    "rename them so stems match"
                )
            mask = cands[0] if cands else None
        if mask is None:
            raise UserError(
                f"{im}: no mask with the stem '{im.stem}' in {masks[0].parent}; add it or remove the image"
            )
        if mask in used:
            raise UserError(f"{mask}: matched by two images; rename the files so each stem is unique")
        used.add(mask)
        pairs.append(Pair(_safe_id(im.stem), im, mask))
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"{images[0].parent}: image names {dup[:5]} collide after sanitising; rename them")
    return pairs


def _safe_id(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stem)


# ---- reading ---------------------------------------------------------------------------


@dataclass
class Raster:
    array: np.ndarray  # (H, W) or (H, W, C)
    crs: object | None = None
    transform: Affine | None = None
    palette: np.ndarray | None = None  # (N, 3) uint8 colours of a palette PNG's indices in ``array``

    def rgb(self) -> np.ndarray:
        """Palette indices expanded to their colours (H, W, 3); other pixels unchanged."""
        if self.palette is None:
            return self.array
        return self.palette[np.minimum(self.array, len(self.palette) - 1)]


def raster_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding pixels."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(path) as src:
                return src.width, src.height
        with Image.open(path) as im:
            return im.size
    except (RasterioIOError, UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: unreadable ({_why(exc)}); replace or remove this file") from exc


def read_raster(path: Path) -> Raster:
    """Pixels (H, W) or (H, W, C) plus georeference when the file has one (TIFF via rasterio)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(path) as src:
                arr = src.read()
                geo = src.crs is not None and not src.transform.is_identity
                arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
                return Raster(arr, src.crs if geo else None, src.transform if geo else None)
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I", "F"):
                return Raster(np.array(im))
            if im.mode == "P":  # indices, with the palette that says what they are (see decode_mask)
                pal = np.array(im.getpalette() or [0, 0, 0], dtype=np.uint8).reshape(-1, 3)
                return Raster(np.array(im), palette=pal)
            if im.mode not in ("L", "RGB", "RGBA", "LA"):
                im = im.convert("RGB")
            return Raster(np.array(im))
    except (RasterioIOError, UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({_why(exc)}); replace or remove this file") from exc


def _why(exc: Exception) -> str:
    return str(exc).split("\n")[0][:120] or type(exc).__name__


def to_rgb(arr: np.ndarray, path: Path, bands: tuple[int, int, int] | None = None) -> np.ndarray:
    """Image pixels -> (H, W, 3) uint8.

    ``bands`` (1-based) says which source band becomes R, G and B (``(1, 1, 1)``: grey repeated;
    ``(3, 2, 1)``: BGR). Without it: the first three bands (alpha and extra bands such as NIR
    dropped), and band 1 repeated for one- and two-band images (see :func:`few_bands`).
    """
    if arr.dtype != np.uint8:
        raise UserError(f"{path}: image dtype {arr.dtype} is not uint8; convert it to 8-bit RGB first")
    if arr.ndim == 2:
        arr = arr[..., None]
    n = arr.shape[-1]
    if bands is not None:
        if max(bands) > n:
            raise UserError(f"{path}: --bands {','.join(map(str, bands))} names band {max(bands)} but the image has "
                            f"{n} band(s); give band numbers from 1 to {n}")  # fmt: skip
        return np.ascontiguousarray(arr[..., [b - 1 for b in bands]])
    if n < 3:  # grey, or grey + alpha (LA)
        return np.repeat(arr[..., :1], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def few_bands(arr: np.ndarray) -> bool:
    """Whether an image has fewer than three bands, so the default band rule copies band 1 into RGB."""
    return arr.ndim == 2 or arr.shape[-1] < 3


def warn_band_copies(paths: list[Path], total: int) -> None:
    """One warning per import for images whose single (or first of two) band was copied into R, G and B."""
    if paths:
        log.warning(
            "%d of %d image(s) have one or two bands (e.g. %s): band 1 is copied into R, G and B; pass --bands 1,1,1 "
            "to confirm this (or --bands 1,2,2 etc. to say what each band means)", len(paths), total, paths[0].name
        )  # fmt: skip


def decode_mask(
    arr: np.ndarray, scheme: ClassScheme, fmt: str, path: Path, palette: np.ndarray | None = None
) -> np.ndarray:
    """Mask pixels -> (H, W) uint8 codes of ``scheme``; unknown codes or colours raise.

    A palette mask (``palette`` (N, 3) given, ``arr`` its indices) is read by colour with
    ``fmt="rgb"``, by index with ``fmt="index"``, and with ``auto`` by colour when every colour
    it uses is in the scheme's legend (editors save colour-coded masks as palette PNGs whose
    index order is arbitrary, e.g. half of the Dubai masks), else by index.
    """
    where = str(path)
    if palette is not None and arr.ndim == 2 and fmt != "index":
        used = {tuple(c) for c in palette[np.minimum(np.unique(arr), len(palette) - 1)].tolist()}
        if fmt == "rgb" or used <= scheme.legend_colours():
            arr = palette[np.minimum(arr, len(palette) - 1)]
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4):
        raise UserError(f"{path}: mask has {arr.shape[-1]} bands; a mask is single-band class codes or RGB(A) "
                        "colours: keep only the label band")  # fmt: skip
    if arr.dtype.kind == "f":
        bad = arr[~np.isfinite(arr) | (arr != np.round(arr))]
        if bad.size:
            raise UserError(f"{path}: mask value {float(bad.flat[0])!r} is not a whole class code; "
                            "masks hold integer codes: fix the export (nearest resampling, integer dtype)")  # fmt: skip
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # drop alpha
        arr = arr[..., : arr.shape[-1] - 1]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if fmt == "index" and arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise UserError(f"{path}: mask_format=index but the mask has differing RGB channels; use mask_format=rgb")
        arr = arr[..., 0]
    if arr.ndim == 2:
        if fmt == "rgb":
            raise UserError(f"{path}: mask_format=rgb but the mask is single-band; use mask_format=index or auto")
        if arr.dtype != np.uint8:
            if arr.min() < 0 or arr.max() > 254:
                raise UserError(f"{path}: mask values {int(arr.min())}..{int(arr.max())} do not fit class codes 0..254")
            arr = arr.astype(np.uint8)
        scheme.check_codes(arr, where)
        return arr
    rgb = arr[..., :3].astype(np.uint8, copy=False)
    if fmt == "auto" and (rgb == rgb[..., :1]).all():
        # Grey RGB: indices saved as RGB, unless every grey is a legend colour (e.g. black/white).
        greys = set(np.unique(rgb[..., 0]).tolist())
        legend = {c[0] for c in scheme.legend_colours() if c[0] == c[1] == c[2]}
        if not greys <= legend:
            scheme.check_codes(rgb[..., 0], where)
            return np.ascontiguousarray(rgb[..., 0])
    return scheme.colours_to_codes(rgb, where)


def resample(arr: np.ndarray, size: tuple[int, int], role: Literal["image", "label"]) -> np.ndarray:
    """Resample to ``size`` (W, H): nearest for labels (codes never mix), area/bilinear for imagery."""
    if (arr.shape[1], arr.shape[0]) == size:
        return arr
    if role == "label":
        return np.array(Image.fromarray(arr).resize(size, Image.Resampling.NEAREST))
    down = size[0] < arr.shape[1]
    return np.array(Image.fromarray(arr).resize(size, Image.Resampling.BOX if down else Image.Resampling.BILINEAR))


# ---- tiling and splits ---------------------------------------------------------------------


def tile_origins(width: int, height: int, tile: int, step: int, block: int | None = None) -> list[tuple[int, int, int]]:
    """(block_id, row, col) of every tile that fits; with ``block``, tiles stay inside their block."""
    out = []
    if block is None:
        for r in range(0, height - tile + 1, step):
            for c in range(0, width - tile + 1, step):
                out.append((0, r, c))
        return out
    nbx = -(-width // block)
    for br in range(0, height, block):
        for bc in range(0, width, block):
            bid = (br // block) * nbx + bc // block
            bh, bw = min(block, height - br), min(block, width - bc)
            for r in range(0, bh - tile + 1, step):
                for c in range(0, bw - tile + 1, step):
                    out.append((bid, br + r, bc + c))
    return out


def pair_groups(pairs: list[Pair], pattern: str) -> list[str]:
    """The group of each pair: the first capture group (or the whole match) of ``pattern``
    searched in its image's file stem; a stem it does not match is an error."""
    rx = re.compile(pattern)
    out = []
    for p in pairs:
        m = rx.search(p.image.stem)
        group = (m.group(1) if rx.groups else m.group(0)) if m else None
        if not group:
            raise UserError(f"{p.image}: stem {p.image.stem!r} does not match group_pattern '{pattern}' (or its "
                            "group is empty); fix the pattern so every image names its group, or remove the file")  # fmt: skip
        out.append(group)
    return out


def group_splits(groups: list[str], cfg: PairImportConfig, where: str) -> dict[str, str]:
    """Split of each group: val and test as ``cfg.groups`` names them (the rest train), or a
    seeded draw of whole groups with ``cfg.ratios``. A split that would be left empty is an error."""
    found = sorted(set(groups))
    if cfg.groups is not None:
        for split in ("val", "test"):
            unknown = [g for g in getattr(cfg.groups, split) if g not in found]
            if unknown:
                raise UserError(f"{where}: groups.{split} names {unknown} but group_pattern '{cfg.group_pattern}' "
                                f"finds only {found}; fix the group names or the pattern")  # fmt: skip
        out = {g: "val" if g in cfg.groups.val else "test" if g in cfg.groups.test else "train" for g in found}
        if "train" not in out.values():
            raise UserError(f"{where}: groups.val and groups.test take all {len(found)} groups {found}, leaving "
                            "train empty; keep at least one group out of them")  # fmt: skip
        return out
    counts = split_counts_for(len(found), cfg.ratios)
    wanted = {"train": cfg.ratios.train, "val": cfg.ratios.val, "test": cfg.ratios.test}
    empty = [k for k, r in wanted.items() if r > 0 and counts[k] == 0]
    if empty:
        raise UserError(f"{where}: group_pattern '{cfg.group_pattern}' finds {len(found)} group(s) {found}, too few "
                        f"for a non-empty {' and '.join(empty)} split; set ratios.{empty[0]}: 0, name the groups "
                        "(groups: {val: [...], test: [...]}) or split by image")  # fmt: skip
    return dict(zip(found, assign_splits(len(found), cfg.ratios, cfg.seed)))


def check_splits_filled(kept: dict[str, int], expected: set[str], cfg: PairImportConfig, where: str) -> None:
    """Every split the groups (or ratios) promise must keep at least one tile."""
    empty = sorted(s for s in expected if kept.get(s, 0) == 0)
    if empty:
        raise UserError(f"{where}: split {empty[0]} gets no tiles (its groups' images are smaller than tile "
                        f"{cfg.tile} or beyond max_nodata={cfg.max_nodata}); give it other groups or lower --tile")  # fmt: skip


def check_import_budget(
    pairs: list[Pair], sizes: list[tuple[int, int]], cfg: PairImportConfig, out: Path, *, resuming: bool
) -> None:
    """Refuse an import whose resampled images, tile grid or tiles cannot fit in memory or on disk."""
    t, step = cfg.tile, cfg.step
    tiles = [max(0, (w - t) // step + 1) * max(0, (h - t) // step + 1) for w, h in sizes]
    # Peak per pair: source image and mask, then the resampled copies (and PIL's buffers, x2);
    # all tile grids and the index records stay in memory until the index is written.
    big = max(range(len(pairs)), key=lambda i: sizes[i][0] * sizes[i][1])
    w, h = sizes[big]
    scale = cfg.scale
    src_px = (w / scale) * (h / scale)
    memory = int(src_px * 4 * 2 + w * h * 4 * 2 + sum(tiles) * (100 + budget.RECORD_BYTES))
    if scale != 1.0:
        fix = (f"--resize-to-gsd {cfg.resize_to_gsd:g} m/px from --gsd {cfg.gsd:g} makes {pairs[big].image.name} "
               f"{w:,}x{h:,} px (x{scale:g}); choose a coarser --resize-to-gsd or check --gsd")  # fmt: skip
    else:
        fix = f"{sum(tiles):,} tiles of {t} px from {len(pairs)} pair(s); use a larger --stride or import fewer images"
    disk = 0 if resuming else budget.tiles_disk_bytes(sum(tiles), t)
    budget.check_budget(f"import into {out}", memory=memory, disk=disk, out=out, fix=fix)


def _scaled_size(w: int, h: int, scale: float) -> tuple[int, int]:
    return max(1, round(w * scale)), max(1, round(h * scale))


def _tile_id(pair: Pair, r: int, c: int) -> str:
    return f"{pair.name}_r{r:05d}_c{c:05d}"


# ---- the importer ----------------------------------------------------------------------------


def resolve_schemes(cfg: PairImportConfig) -> tuple[ClassScheme, Remap | None, ClassScheme]:
    """(mask scheme, remap or None, dataset scheme)."""
    src = load_scheme(cfg.scheme)
    if cfg.remap is None:
        return src, None, src
    remap = load_remap(cfg.remap)
    if remap.source.name != src.name:
        raise UserError(
            f"remap {cfg.remap!r} maps scheme '{remap.source.name}' but --scheme is '{src.name}'; "
            f"pass --scheme {remap.source.name} or another remap"
        )
    return src, remap, remap.target


def import_pairs(
    images: str | Path,
    masks: str | Path,
    cfg: PairImportConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
) -> Dataset:
    """Import image/mask pairs into a dataset of kind ``real`` at ``out``; resumable.

    ``images`` and ``masks`` are directories or glob patterns. Returns the finished dataset.
    """
    out = Path(out)
    src_scheme, remap, scheme = resolve_schemes(cfg)
    pairs = pair_files(list_images(images, "images"), list_images(masks, "masks"))

    # Headers first: sizes and readability of every file before anything is written.
    sizes = []
    for p in pairs:
        wi, hi = raster_size(p.image)
        wm, hm = raster_size(p.mask)
        if (wi, hi) != (wm, hm):
            raise UserError(
                f"{p.mask}: mask is {wm}x{hm} but its image {p.image.name} is {wi}x{hi}; they must match pixel for pixel"
            )
        sizes.append(_scaled_size(wi, hi, cfg.scale))

    resuming = not overwrite and ((out / META_FILE).exists() or (out / PARTIAL_FILE).exists())
    check_import_budget(pairs, sizes, cfg, out, resuming=resuming)
    block = cfg.block_size if cfg.split_by == "block" else None
    grids = [tile_origins(w, h, cfg.tile, cfg.step, block) for (w, h) in sizes]
    if not any(grids):
        w, h = sizes[0]
        raise UserError(f"{pairs[0].image}: images ({w}x{h} px after resampling) are smaller than tile {cfg.tile}; "
                        "lower --tile")  # fmt: skip
    small = [p.image.name for p, g in zip(pairs, grids) if not g]
    if small:
        log.warning("%d image(s) smaller than one %d px tile are skipped, e.g. %s", len(small), cfg.tile, small[0])
    # Split units: whole images, (image, block) cells, or groups of images. Units without tiles are not drawn.
    group_extra: dict[str, object] = {}
    split_of_group: dict[str, str] = {}
    if cfg.split_by == "group":
        assert cfg.group_pattern is not None  # the config validator requires it
        groups = pair_groups(pairs, cfg.group_pattern)
        split_of_group = group_splits(groups, cfg, str(images))
        units = [(i, 0) for i, g in enumerate(grids) if g]
        unit_split = {u: split_of_group[groups[u[0]]] for u in units}
        expected = set(split_of_group.values())
        check_splits_filled({s: 1 for s in unit_split.values()}, expected, cfg, str(images))
        group_extra = {
            "group_pattern": cfg.group_pattern,
            "groups": split_of_group,
            "source_groups": {p.image.name: g for p, g in zip(pairs, groups)},
        }
    else:
        if cfg.split_by == "image":
            units = [(i, 0) for i, g in enumerate(grids) if g]
        else:
            units = sorted({(i, b) for i, g in enumerate(grids) for (b, _, _) in g})
        unit_split = dict(zip(units, assign_splits(len(units), cfg.ratios, cfg.seed)))

    # Without --bands the hash is what it was before the option existed: older datasets still resume.
    hashed = config_dict(cfg) if cfg.bands is not None else {k: v for k, v in config_dict(cfg).items() if k != "bands"}
    h = config_hash(hashed, str(Path(images).resolve()), str(Path(masks).resolve()), [p.name for p in pairs])
    info = DatasetInfo(
        name=out.name,
        kind="real",
        scheme=scheme,
        tile_size=cfg.tile,
        gsd=cfg.resize_to_gsd or cfg.gsd,
        provenance=provenance(str(images), config_hash=h, seed=cfg.seed, masks=str(masks)),
        extra={
            "importer": "pairs",
            "pairs": len(pairs),
            "mask_scheme": src_scheme.name,
            "remap": cfg.remap,
            "split_by": cfg.split_by,
            "split_units": len(split_of_group) if cfg.split_by == "group" else len(units),
            **group_extra,
        },
    )
    total = sum(len(g) for g in grids)
    # Decode every pair exactly as the import will (pixels, dtype, codes, georeference, nodata
    # rule) before anything is written, so that bad input leaves no partial output. A resumed
    # run checks only the pairs it still has to write.
    copied: list[Path] = []
    if not resuming:
        kept_by_pair = [_check_pair(p, grids[i], src_scheme, remap, scheme, cfg, copied) for i, p in enumerate(pairs)]
        kept = sum(kept_by_pair)
        if kept == 0:
            raise UserError(
                f"{images}: all {total} tiles of the {len(pairs)} pair(s) are nodata (code {scheme.nodata}) beyond "
                f"max_nodata={cfg.max_nodata}; check the masks and --scheme, or raise max_nodata"
            )
        if cfg.split_by == "group":
            by_split: dict[str, int] = {}
            for (i, _), split in unit_split.items():
                by_split[split] = by_split.get(split, 0) + kept_by_pair[i]
            check_splits_filled(by_split, set(split_of_group.values()), cfg, str(images))
    with DatasetWriter(out, info, overwrite=overwrite) as writer:
        save_resolved(cfg, out)
        todo = [i for i, g in enumerate(grids) if any(not writer.has(_tile_id(pairs[i], r, c)) for _, r, c in g)]
        if resuming:
            for i in todo:
                _check_pair(pairs[i], grids[i], src_scheme, remap, scheme, cfg, copied)
        warn_band_copies(copied, len(pairs))
        t0, written, dropped = time.perf_counter(), 0, 0
        bar = tqdm(total=total, initial=total - sum(len(grids[i]) for i in todo), unit="tile", desc="import",
                   dynamic_ncols=True)  # fmt: skip
        with ThreadedWrites(writer) as sink:
            for i in todo:
                pair = pairs[i]
                for tid, split, img, lab, crs, tf in _tiles(pair, grids[i], unit_split, i, src_scheme, remap, scheme, cfg):
                    if lab is None:
                        dropped += 1
                    elif not writer.has(tid):
                        sink.submit(tid, split, lab, img, source=pair.image.name, crs=crs, transform=tf)
                        written += 1
                    bar.update(1)
        bar.close()
        ds = writer.finalize()
    dt = time.perf_counter() - t0
    log.info("imported %d tiles (%d dropped for nodata) in %.1f s, %.1f tiles/s -> %s",
             written, dropped, dt, written / max(dt, 1e-9), out)  # fmt: skip
    return ds


def _load_mask(
    pair: Pair, src: ClassScheme, remap: Remap | None, cfg: PairImportConfig, raw: Raster | None = None
) -> np.ndarray:
    raw = raw or read_raster(pair.mask)
    codes = decode_mask(raw.array, src, cfg.mask_format, pair.mask, raw.palette)
    return remap.apply(codes, str(pair.mask)) if remap else codes


def _check_pair(
    pair: Pair,
    grid: list[tuple[int, int, int]],
    src: ClassScheme,
    remap: Remap | None,
    scheme: ClassScheme,
    cfg: PairImportConfig,
    copied: list[Path] | None = None,
) -> int:
    """Decode one pair as the import will and raise on anything wrong; return how many tiles it keeps.
    Images whose band 1 the default rule copies into RGB are appended to ``copied``."""
    raw = read_raster(pair.mask)
    codes = _load_mask(pair, src, remap, cfg, raw)
    img = read_raster(pair.image)
    to_rgb(img.rgb(), pair.image, cfg.bands)
    if cfg.bands is None and few_bands(img.rgb()) and copied is not None:
        copied.append(pair.image)
    check_same_grid(pair, img, raw)
    codes = resample(codes, _scaled_size(codes.shape[1], codes.shape[0], cfg.scale), "label")
    t = cfg.tile
    return sum(not _dropped(codes[r : r + t, c : c + t], scheme, cfg) for _, r, c in grid)


def check_same_grid(pair: Pair, img: Raster, mask: Raster) -> None:
    """A georeferenced mask must lie on its image's pixel grid (same CRS and transform)."""
    if img.crs is None or mask.crs is None:
        return  # a plain mask is aligned pixel for pixel by construction
    if img.crs != mask.crs:
        raise UserError(f"{pair.mask}: mask CRS {mask.crs.to_string()} differs from its image {pair.image.name} "
                        f"({img.crs.to_string()}); reproject the mask onto the image grid")  # fmt: skip
    if not img.transform.almost_equals(mask.transform):
        m, i = mask.transform, img.transform
        raise UserError(
            f"{pair.mask}: mask grid (origin {m.c:g}, {m.f:g}; pixel {m.a:g} x {-m.e:g}) differs from its image "
            f"{pair.image.name} (origin {i.c:g}, {i.f:g}; pixel {i.a:g} x {-i.e:g}); resample the mask onto the image grid"
        )


def _dropped(lab: np.ndarray, scheme: ClassScheme, cfg: PairImportConfig) -> bool:
    """The drop rule: all-nodata tiles, and tiles whose nodata share exceeds ``max_nodata``."""
    if scheme.nodata is None:
        return False
    frac = float((lab == scheme.nodata).mean())
    return frac >= 1.0 or frac > cfg.max_nodata


def _tiles(
    pair: Pair,
    grid: list[tuple[int, int, int]],
    unit_split: dict[tuple[int, int], str],
    index: int,
    src: ClassScheme,
    remap: Remap | None,
    scheme: ClassScheme,
    cfg: PairImportConfig,
) -> Iterator[tuple[str, str, np.ndarray | None, np.ndarray | None, object, Affine | None]]:
    """Yield (id, split, image, label, crs, transform) per tile; label None when dropped for nodata."""
    codes = _load_mask(pair, src, remap, cfg)
    img = read_raster(pair.image)
    rgb = to_rgb(img.rgb(), pair.image, cfg.bands)
    size = _scaled_size(codes.shape[1], codes.shape[0], cfg.scale)
    codes, rgb = resample(codes, size, "label"), resample(rgb, size, "image")
    transform = img.transform
    if transform is not None and cfg.scale != 1.0:
        transform = transform @ Affine.scale(img.array.shape[1] / size[0], img.array.shape[0] / size[1])
    t = cfg.tile
    for b, r, c in grid:
        split = unit_split[(index, b if cfg.split_by == "block" else 0)]
        lab = codes[r : r + t, c : c + t]
        if _dropped(lab, scheme, cfg):
            yield _tile_id(pair, r, c), split, None, None, None, None
            continue
        tf = window_transform(Window(c, r, t, t), transform) if transform is not None else None
        yield _tile_id(pair, r, c), split, rgb[r : r + t, c : c + t], lab, img.crs, tf
