"""Region-held-out splits (``split_by: group``) on tiny pairs built here, and the Dubai pairs
(RGB colour-coded and palette masks, two unlabeled colours) with the shipped preset."""

import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from terrasynth.classes import load_remap, load_scheme
from terrasynth.config import config_dict, read_yaml
from terrasynth.data.dataset import describe
from terrasynth.data.importers import GroupSplits, PairImportConfig, decode_mask, import_pairs, read_raster
from terrasynth.data.splits import SplitRatios
from terrasynth.errors import UserError

PATTERN = r"^(r\d+)_"


def _region_pairs(root, stems, size=32):
    """One RGB PNG and one WorldCover-coded mask per stem; the image's red channel is its index."""
    (root / "img").mkdir(parents=True)
    (root / "msk").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, stem in enumerate(stems):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        img[..., 0] = i
        Image.fromarray(img).save(root / "img" / f"{stem}.png")
        Image.fromarray(rng.choice(np.array([10, 30, 80], np.uint8), (size, size))).save(root / "msk" / f"{stem}.png")
    return root / "img", root / "msk"


STEMS = ["r1_a", "r1_b", "r2_a", "r3_a", "r3_b", "r4_a", "r4_b", "r4_c"]


def _groups_by_split(ds):
    out = {}
    for r in ds.records:
        out.setdefault(r.split, set()).add(ds.group(r))
    return out


# ---- split_by: group on tiny pairs ------------------------------------------------------------------


def test_named_groups_hold_out_whole_regions(tmp_path, capsys):
    img, msk = _region_pairs(tmp_path, STEMS)
    cfg = PairImportConfig(tile=16, split_by="group", group_pattern=PATTERN, groups=GroupSplits(val=["r2"], test=["r3"]))
    ds = import_pairs(img, msk, cfg, tmp_path / "out")
    assert len(ds) == len(STEMS) * 4 and ds.verify() == []
    assert _groups_by_split(ds) == {"train": {"r1", "r4"}, "val": {"r2"}, "test": {"r3"}}
    for r in ds.records:  # the group is the region of the tile's own source image
        assert ds.group(r) == r.source.split("_")[0] and r.split == {"r2": "val", "r3": "test"}.get(ds.group(r), "train")
    extra = ds.info.extra
    assert extra["split_by"] == "group" and extra["split_units"] == 4 and extra["group_pattern"] == PATTERN
    assert extra["groups"] == {"r1": "train", "r2": "val", "r3": "test", "r4": "train"}
    assert extra["source_groups"]["r4_c.png"] == "r4"
    assert "groups    train: r1, r4; val: r2; test: r3" in describe(ds)
    # the same import through the CLI, flags for every option
    assert run_cli("-q", "data", "import-pairs", img, msk, "--tile", "16", "--split-by", "group",
                   "--group-pattern", PATTERN, "--val-groups", "r2", "--test-groups", "r3", "--out", tmp_path / "cli") == 0  # fmt: skip
    assert (tmp_path / "cli" / "index.csv").read_text() == (tmp_path / "out" / "index.csv").read_text()
    capsys.readouterr()
    assert run_cli("data", "info", tmp_path / "cli") == 0
    assert "groups    train: r1, r4; val: r2; test: r3" in capsys.readouterr().out


def test_drawn_groups_are_whole_and_seeded(tmp_path):
    img, msk = _region_pairs(tmp_path, STEMS)
    ratios = SplitRatios(train=0.5, val=0.25, test=0.25)
    draws = []
    for seed in range(4):
        cfg = PairImportConfig(tile=16, split_by="group", group_pattern=PATTERN, ratios=ratios, seed=seed)
        ds = import_pairs(img, msk, cfg, tmp_path / f"s{seed}")
        by = _groups_by_split(ds)
        assert sorted(len(by[s]) for s in ("train", "val", "test")) == [1, 1, 2]  # 4 groups at 0.5/0.25/0.25
        assert set().union(*by.values()) == {"r1", "r2", "r3", "r4"} and sum(map(len, by.values())) == 4  # disjoint
        draws.append(ds.info.extra["groups"])
    again = import_pairs(img, msk, PairImportConfig(tile=16, split_by="group", group_pattern=PATTERN, ratios=ratios,
                                                    seed=0), tmp_path / "again")  # fmt: skip
    assert again.info.extra["groups"] == draws[0] and len({str(sorted(d.items())) for d in draws}) > 1


def test_whole_match_names_the_group_without_a_capture(tmp_path):
    img, msk = _region_pairs(tmp_path, ["north-1", "north-2", "south-1"])
    cfg = PairImportConfig(tile=16, split_by="group", group_pattern="^[a-z]+", groups=GroupSplits(test=["south"]))
    ds = import_pairs(img, msk, cfg, tmp_path / "o")
    assert _groups_by_split(ds) == {"train": {"north"}, "test": {"south"}}


def test_group_split_bad_input_is_one_line_naming_the_fix(tmp_path, capsys):
    img, msk = _region_pairs(tmp_path, STEMS + ["stray"])
    base = dict(tile=16, split_by="group", group_pattern=PATTERN)
    with pytest.raises(UserError, match=r"stray\.png: stem 'stray' does not match group_pattern '\^\(r\\d\+\)_'"):
        import_pairs(img, msk, PairImportConfig(**base, groups=GroupSplits(test=["r3"])), tmp_path / "o")
    (img / "stray.png").unlink()
    (msk / "stray.png").unlink()
    cases = [
        (dict(groups=GroupSplits(val=["r2"], test=["r9"])), r"groups\.test names \['r9'\] but group_pattern .* finds "
         r"only \['r1', 'r2', 'r3', 'r4'\]; fix the group names"),
        (dict(groups=GroupSplits(val=["r1", "r2"], test=["r3", "r4"])), "leaving train empty"),
        (dict(ratios=SplitRatios(train=0.4, val=0.3, test=0.3), group_pattern="^(r[12])_"), "does not match"),
    ]
    for extra, match in cases:
        with pytest.raises(UserError, match=match) as err:
            import_pairs(img, msk, PairImportConfig(**{**base, **extra}), tmp_path / "o")
        assert "\n" not in str(err.value)
    # too few groups for three non-empty splits
    two = tmp_path / "two"
    i2, m2 = _region_pairs(two, ["r1_a", "r2_a"])
    with pytest.raises(UserError, match=r"finds 2 group\(s\) \['r1', 'r2'\], too few for a non-empty test split; set ratios.test: 0"):
        import_pairs(i2, m2, PairImportConfig(**base, ratios=SplitRatios(train=0.5, val=0.25, test=0.25)), two / "o")
    # a named group whose images give no tiles leaves its split empty
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img / "r2_a.png")
    Image.fromarray(np.full((8, 8), 10, np.uint8)).save(msk / "r2_a.png")
    with pytest.raises(UserError, match="split val gets no tiles"):
        import_pairs(img, msk, PairImportConfig(**base, groups=GroupSplits(val=["r2"], test=["r3"])), tmp_path / "o")
    assert not (tmp_path / "o" / "dataset.json").exists()
    # config errors, through the CLI: exit 2 and one line each
    argv = ["data", "import-pairs", img, msk, "--tile", "16", "--out", tmp_path / "c"]
    assert run_cli(*argv, "--split-by", "group") == 2  # no pattern
    assert run_cli(*argv, "--split-by", "group", "--group-pattern", "^(r\\d+") == 2  # not a regex
    assert run_cli(*argv, "--group-pattern", PATTERN) == 2  # a pattern without split_by group
    assert run_cli(*argv, "--split-by", "group", "--group-pattern", PATTERN, "--val-groups", "r3",
                   "--test-groups", "r3") == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4, err
    assert "needs group_pattern" in err[0] and "not a regular expression" in err[1]
    assert "only with split_by=group" in err[2] and "in both val and test" in err[3]


def test_image_and_block_configs_are_unchanged():
    """Unset group options stay out of the resolved config, so the hashes of existing imports and
    pipeline runs (which resume and cache on them) do not change."""
    for cfg in (PairImportConfig(), PairImportConfig(split_by="block", block_size=128)):
        d = config_dict(cfg)
        assert "group_pattern" not in d and "groups" not in d
        assert PairImportConfig.model_validate(d) == cfg
    d = config_dict(PairImportConfig(split_by="group", group_pattern=PATTERN, groups=GroupSplits(test=["r1"])))
    assert d["group_pattern"] == PATTERN and d["groups"] == {"val": [], "test": ["r1"]}


def test_shipped_configs_are_the_repository_configs():
    """``terrasynth run NAME`` reads the package's configs (a link to configs/): they must be the same files."""
    repo = {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (ROOT / "src" / "terrasynth" / "configs").glob("*.yaml")}
    assert repo == shipped and "dubai.yaml" in repo


# ---- the real Dubai pairs --------------------------------------------------------------------------

DUBAI_COLOURS = {"#3c1098", "#8429f6", "#6ec1e4", "#fedd3a", "#e2a929", "#9b9b9b", "#000000"}


@pytest.fixture
def dubai(shared_data):
    return shared_data / "pairs" / "dubai"


def _subset(dubai, tmp_path, parts):
    """A folder of symlinks to some of the Dubai pairs (fast tests, same files)."""
    for sub, ext in (("images", "jpg"), ("masks", "png")):
        (tmp_path / sub).mkdir()
        for stem in parts:
            os.symlink(dubai / sub / f"{stem}.{ext}", tmp_path / sub / f"{stem}.{ext}")
    return tmp_path / "images", tmp_path / "masks"


@pytest.mark.shared
def test_dubai_scheme_covers_every_mask_colour(dubai):
    scheme = load_scheme("dubai")
    legend = {"#{:02x}{:02x}{:02x}".format(*c) for c in scheme.legend_colours()}
    found = set()
    masks = sorted((dubai / "masks").glob("*.png"))
    assert len(masks) == 63
    for m in masks:
        with Image.open(m) as im:
            found |= {"#{:02x}{:02x}{:02x}".format(*c) for _, c in im.convert("RGB").getcolors(1 << 16)}
    assert found == DUBAI_COLOURS == legend  # every colour decodes; no legend colour is unused
    # Palette masks (tile2, tile4) hold per-file indices: they decode by colour, like the RGB masks.
    for stem in ("tile2_part1", "tile4_part3"):
        raw = read_raster(dubai / "masks" / f"{stem}.png")
        assert raw.palette is not None
        codes = decode_mask(raw.array, scheme, "auto", dubai / "masks" / f"{stem}.png", raw.palette)
        rgb = np.array(Image.open(dubai / "masks" / f"{stem}.png").convert("RGB"))
        assert (scheme.colourize(codes)[codes != 0] == rgb[codes != 0]).all()
    # Black is unlabeled, as grey is.
    raw = read_raster(dubai / "masks" / "tile8_part2.png")
    codes = decode_mask(raw.array, scheme, "auto", dubai / "masks" / "tile8_part2.png")
    black = (raw.array == 0).all(-1)
    assert black.sum() > 500 and (codes[black] == 0).all() and ((codes == 0) == (black | (raw.array == 155).all(-1))).all()


@pytest.mark.shared
def test_dubai_preset_holds_out_whole_regions(dubai, tmp_path):
    # The preset's import options as the pipeline reads them (the whole preset runs as a tiny twin
    # in test_pipeline_e2e.py), on one part of each region at a coarser stride.
    opts = PairImportConfig.model_validate(read_yaml(ROOT / "configs" / "dubai.yaml")["data"]["pairs"]["options"])
    assert opts.split_by == "group" and opts.scheme == "dubai" and opts.tile == 64
    img, msk = _subset(dubai, tmp_path, [f"tile{n}_part3" for n in (1, 2, 3, 4, 5, 6, 8)])
    ds = import_pairs(img, msk, opts.model_copy(update={"stride": 384}), tmp_path / "out")
    by = _groups_by_split(ds)
    assert by == {"train": {"tile1", "tile3", "tile4", "tile6"}, "val": set(opts.groups.val), "test": set(opts.groups.test)}
    assert by["val"] == {"tile2"} and by["test"] == {"tile5", "tile8"}
    assert ds.info.extra["groups"]["tile8"] == "test" and ds.scheme.name == "dubai"
    tiles = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    # 64 px tiles at stride 384: tile1 2x2, tile3 2x2, tile4 3x3, tile6 3x3 | tile2 2x2 | tile5 3x3, tile8 6x4
    assert tiles == {"train": 4 + 4 + 9 + 9, "val": 4, "test": 9 + 24}, tiles
    freq = {s: ds.class_frequencies(s) for s in ("train", "test")}
    assert all(all(f[c] > 0.01 for c in (1, 2, 3, 4, 5)) for f in freq.values())  # every class in train and test
    # tile8_part3 is 17 % black: unlabeled, counted as nodata, never a class
    assert sum(r.nodata_pixels for r in ds.split("test")) > 0.05 * 24 * 64 * 64


@pytest.mark.shared
def test_dubai_remap_onto_worldcover(dubai, tmp_path):
    stems = ["tile2_part5", "tile6_part2"]
    img, msk = _subset(dubai, tmp_path, stems)
    opts = dict(scheme="dubai", tile=64, stride=128, split_by="group", group_pattern=r"^(tile\d+)_",
                groups=GroupSplits(test=["tile6"]))  # fmt: skip
    native = import_pairs(img, msk, PairImportConfig(**opts), tmp_path / "n")
    mapped = import_pairs(img, msk, PairImportConfig(**opts, remap="dubai_to_worldcover"), tmp_path / "w")
    assert mapped.scheme.name == "worldcover" and len(native) == len(mapped) > 20
    lut = load_remap("dubai_to_worldcover").lut
    assert [lut[c] for c in (0, 1, 2, 3, 4, 5)] == [0, 50, 60, 50, 10, 80]
    for a, b in zip(native.records, mapped.records):
        assert a.id == b.id and a.split == b.split and (lut[native.read_label(a)] == mapped.read_label(b)).all()
    present = {c for c, n in mapped.class_frequencies().items() if n > 0}
    assert present == {10, 50, 60, 80}
