"""Pair importer: real shared pairs (DroneDeploy, LoveDA, FLAIR, NAIP + Chesapeake) and tiny pairs built here.
Region-held-out (group) splits and the Dubai pairs: test_import_dubai.py."""

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from conftest import run_cli
from terrasynth.classes import WORLDCOVER, load_scheme
from terrasynth.data.dataset import Dataset, DatasetWriter
from terrasynth.data.importers import PairImportConfig, import_pairs, pair_files
from terrasynth.data.splits import SplitRatios, assign_splits, split_counts_for
from terrasynth.errors import UserError



def _pairs(root, n=5, size=(40, 40), codes=(10, 30, 50, 80), rng=None, mask_name="{}.png"):
    """Write ``n`` random RGB PNGs and WorldCover-coded single-band mask PNGs; return (images, masks) dirs."""
    rng = rng or np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "msk").mkdir(parents=True)
    for i in range(n):
        h, w = size
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"p{i}.png")
        m = rng.choice(codes, size=(h // 4, w // 4)).astype(np.uint8).repeat(4, 0).repeat(4, 1)
        Image.fromarray(m).save(root / "msk" / mask_name.format(f"p{i}"))
    return root / "img", root / "msk"


def _read_all(ds):
    return {r.id: (r.split, ds.read_label(r).tobytes(), ds.read_image(r).tobytes()) for r in ds.records}


# ---- tiny pairs ------------------------------------------------------------------------------


def test_tiles_counts_and_image_splits(tmp_path):
    img, msk = _pairs(tmp_path, n=5, size=(40, 40))
    ds = import_pairs(img, msk, PairImportConfig(tile=16), tmp_path / "out")
    assert len(ds) == 5 * 4  # 2x2 tiles per 40x40 image; the 8-px edge strip is dropped
    assert ds.info.kind == "real" and ds.scheme.name == "worldcover" and ds.verify() == []
    by_src = {}
    for r in ds.records:
        by_src.setdefault(r.source, set()).add(r.split)
    assert all(len(s) == 1 for s in by_src.values())  # one split per source image
    assert sorted(s.pop() for s in by_src.values()) == ["test"] + ["train"] * 4  # exact 0.8 / 0.2
    # the tile is the exact crop of the source
    rec = next(r for r in ds.records if r.id == "p1_r00016_c00000")
    src = np.array(Image.open(img / "p1.png"))[16:32, 0:16]
    assert (ds.read_image(rec) == src).all()
    assert (tmp_path / "out" / "config.yaml").exists()


def test_stride_and_block_split_never_share_pixels(tmp_path):
    img, msk = _pairs(tmp_path, n=1, size=(128, 128))
    cfg = PairImportConfig(tile=16, stride=8, split_by="block", block_size=32, ratios=SplitRatios(train=0.5, test=0.5))
    ds = import_pairs(img, msk, cfg, tmp_path / "out")
    owner = np.full((128, 128), "", dtype=object)
    for r in ds.records:
        _, row, col = r.id.rsplit("_", 2)
        y, x = int(row[1:]), int(col[1:])
        patch = owner[y : y + 16, x : x + 16]
        assert set(patch[patch != ""].tolist()) <= {r.split}  # no pixel in two splits
        patch[...] = r.split
    assert len(ds) == 16 * 9  # 16 blocks of 32 px, 3x3 tiles of 16 at stride 8 in each
    assert ds.info.extra["split_units"] == 16 and {r.split for r in ds.records} == {"train", "test"}


def test_resize_to_gsd_and_georeferenced_tiff(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    tf = from_origin(500000, 4000000, 0.5, 0.5)
    rgb = np.random.default_rng(1).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    lab = np.full((64, 64), 10, np.uint8)
    lab[:, 32:] = 80
    prof = dict(driver="GTiff", width=64, height=64, crs="EPSG:32633", transform=tf, dtype="uint8")
    with rasterio.open(tmp_path / "i" / "s.tif", "w", count=3, **prof) as d:
        d.write(rgb)
    with rasterio.open(tmp_path / "m" / "s.tif", "w", count=1, **prof) as d:
        d.write(lab, 1)
    cfg = PairImportConfig(tile=16, gsd=0.5, resize_to_gsd=1.0, ratios=SplitRatios(train=1.0, test=0.0))
    ds = import_pairs(tmp_path / "i", tmp_path / "m", cfg, tmp_path / "out")
    assert len(ds) == 4 and ds.info.gsd == 1.0
    rec = next(r for r in ds.records if r.id == "s_r00000_c00016")
    assert rec.crs == "EPSG:32633" and rec.bounds == (500016.0, 3999984.0, 500032.0, 4000000.0)
    assert (ds.read_label(rec) == 80).all()  # labels resampled nearest: no mixed codes


def test_rgb_masks_with_remap_and_suffix_pairing(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    flair = load_scheme("flair")
    codes = np.array([[1, 6], [5, 10]], np.uint8).repeat(16, 0).repeat(16, 1)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "i" / "z1.jpg")
    Image.fromarray(flair.colourize(codes)).save(tmp_path / "m" / "z1_mask.png")
    cfg = PairImportConfig(scheme="flair", remap="flair_to_worldcover", tile=16, ratios=SplitRatios(train=1, test=0))
    ds = import_pairs(tmp_path / "i", tmp_path / "m", cfg, tmp_path / "out")
    labels = {r.id: int(ds.read_label(r)[0, 0]) for r in ds.records}
    assert labels == {"z1_r00000_c00000": 50, "z1_r00000_c00016": 10, "z1_r00016_c00000": 80, "z1_r00016_c00016": 30}
    assert ds.scheme.name == "worldcover" and ds.info.extra["mask_scheme"] == "flair"


def test_max_nodata_drops_tiles(tmp_path):
    img, msk = _pairs(tmp_path, n=1, size=(32, 32), codes=(10,))
    m = np.array(Image.open(msk / "p0.png"))
    m[:16, :] = 0  # top half nodata
    m[16:24, :16] = 0
    Image.fromarray(m).save(msk / "p0.png")
    ds = import_pairs(img, msk, PairImportConfig(tile=16, max_nodata=0.4, ratios=SplitRatios(train=1, test=0)),
                      tmp_path / "o")  # fmt: skip
    assert sorted(r.id for r in ds.records) == ["p0_r00016_c00016"]  # all-nodata and 50 %-nodata tiles dropped


def test_errors_are_one_line_and_name_the_problem(tmp_path):
    img, msk = _pairs(tmp_path / "a", n=2)
    cfg = PairImportConfig(tile=16)
    with pytest.raises(UserError, match="no images found"):
        import_pairs(tmp_path / "a" / "msk" / "*.jpg", msk, cfg, tmp_path / "o1")
    (msk / "p1.png").rename(tmp_path / "p1.png")
    with pytest.raises(UserError, match=r"p1\.png: no mask with the stem 'p1'"):
        import_pairs(img, msk, cfg, tmp_path / "o2")
    Image.fromarray(np.full((24, 40), 10, np.uint8)).save(msk / "p1.png")
    with pytest.raises(UserError, match=r"mask is 40x24 but its image p1\.png is 40x40"):
        import_pairs(img, msk, cfg, tmp_path / "o3")
    (msk / "p1.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"p1\.png: unreadable"):
        import_pairs(img, msk, cfg, tmp_path / "o4")
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(msk / "p1.png")
    with pytest.raises(UserError, match=r"codes \[7\] are not in scheme 'worldcover'.*--remap"):
        import_pairs(img, msk, cfg, tmp_path / "o5")
    Image.fromarray(np.dstack([np.full((40, 40), v, np.uint8) for v in (1, 2, 3)])).save(msk / "p1.png")
    with pytest.raises(UserError, match=r"#010203"):
        import_pairs(img, msk, cfg, tmp_path / "o6")
    with pytest.raises(UserError, match="maps scheme 'flair' but --scheme is 'worldcover'"):
        import_pairs(img, msk, PairImportConfig(remap="flair_to_worldcover"), tmp_path / "o7")
    for o in ("o2", "o3", "o4", "o5", "o6", "o7"):  # bad input leaves no dataset behind
        assert not (tmp_path / o / "dataset.json").exists() and not list((tmp_path / o).glob("labels/*.tif"))


def test_cli_error_exit_code(tmp_path, capsys):
    img, msk = _pairs(tmp_path, n=1)
    (msk / "p0.png").unlink()
    assert run_cli("data", "import-pairs", img, tmp_path / "nowhere", "--out", tmp_path / "o") == 2
    assert run_cli("data", "import-pairs", img, img, "--tile", "4", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nowhere" in err[0] and "tile" in err[1]


def test_ambiguous_partners_are_refused(tmp_path):
    img, msk = _pairs(tmp_path, n=1, mask_name="{}_mask.png")
    Image.open(msk / "p0_mask.png").save(msk / "p0_label.png")
    with pytest.raises(UserError, match="several masks"):
        pair_files(sorted(img.iterdir()), sorted(msk.iterdir()))


def test_interrupted_import_resumes_to_the_same_result(tmp_path, monkeypatch):
    img, msk = _pairs(tmp_path, n=4, size=(48, 48))
    cfg = PairImportConfig(tile=16)
    ref = _read_all(import_pairs(img, msk, cfg, tmp_path / "ref"))
    real_write, calls = DatasetWriter.write, {"n": 0}

    def dying_write(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return real_write(self, *a, **k)

    monkeypatch.setattr(DatasetWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        import_pairs(img, msk, cfg, tmp_path / "run")
    with pytest.raises(UserError, match="unfinished"):
        Dataset.open(tmp_path / "run")
    monkeypatch.setattr(DatasetWriter, "write", real_write)
    calls["n"] = 0
    ds = import_pairs(img, msk, cfg, tmp_path / "run")
    assert _read_all(ds) == ref
    assert (tmp_path / "run" / "index.csv").read_text() == (tmp_path / "ref" / "index.csv").read_text()


def test_split_counts_exact():
    assert split_counts_for(180, SplitRatios()) == {"train": 144, "val": 0, "test": 36}
    assert split_counts_for(3, SplitRatios(train=0.7, val=0.15, test=0.15)) == {"train": 1, "val": 1, "test": 1}
    a = assign_splits(10, SplitRatios(), 1)
    assert a == assign_splits(10, SplitRatios(), 1) and a.count("test") == 2 and a != assign_splits(10, SplitRatios(), 2)
    with pytest.raises(ValueError):
        SplitRatios(train=0.9, test=0.2)


# ---- real shared pairs ---------------------------------------------------------------------------


def test_dronedeploy_2880_tiles_and_info(shared_data, tmp_path, capsys):
    root = shared_data / "pairs" / "dronedeploy"
    out = tmp_path / "dd"
    assert run_cli("-q", "data", "import-pairs", root / "images", root / "masks", "--scheme", "dronedeploy",
                   "--tile", "64", "--stride", "64", "--out", out) == 0  # fmt: skip
    ds = Dataset.open(out)
    assert len(ds) == 2880 and ds.info.extra["pairs"] == 180 and ds.scheme.name == "dronedeploy"
    srcs = {}
    for r in ds.records:
        srcs.setdefault(r.source, set()).add(r.split)
    assert len(srcs) == 180 and all(len(s) == 1 for s in srcs.values())
    assert sum(1 for s in srcs.values() if "test" in s) == 36
    freq = ds.class_frequencies()
    assert 0.55 < freq[4] < 0.75 and 0.2 < freq[2] < 0.35  # ground and vegetation as published
    capsys.readouterr()
    assert run_cli("data", "info", out) == 0
    text = capsys.readouterr().out
    assert "2880 of 64x64" in text and "train: 2304" in text and "Vegetation" in text


def test_dronedeploy_remap_to_worldcover(shared_data, tmp_path):
    root = shared_data / "pairs" / "dronedeploy"
    cfg = PairImportConfig(scheme="dronedeploy", remap="dronedeploy_to_worldcover")
    ds = import_pairs(root / "images" / "*-00001?.png", root / "masks", cfg, tmp_path / "dd")
    assert ds.scheme is WORLDCOVER or ds.scheme.name == "worldcover"
    assert len(ds) == 10 * 16
    present = {c for c, n in ds.class_frequencies().items() if n > 0}
    assert present <= {10, 50, 60, 80} and {10, 60} <= present


def test_dronedeploy_codes_map_pixel_for_pixel(shared_data, tmp_path):
    root = shared_data / "pairs" / "dronedeploy"
    name = "ec09336a6f_06BA0AF311OPENPIPELINE-000000"
    cfg = PairImportConfig(scheme="dronedeploy", remap="dronedeploy_to_worldcover", ratios=SplitRatios(train=1, test=0))
    ds = import_pairs(root / "images" / f"{name}.png", root / "masks", cfg, tmp_path / "one")
    raw = np.array(Image.open(root / "masks" / f"{name}.png"))
    lut = np.array([50, 50, 10, 80, 60, 50], np.uint8)
    rec = next(r for r in ds.records if r.id.endswith("r00064_c00128"))
    assert (ds.read_label(rec) == lut[raw[64:128, 128:192]]).all()


def test_loveda_with_remap(shared_data, tmp_path):
    root = shared_data / "pairs" / "loveda"
    cfg = PairImportConfig(scheme="loveda", remap="loveda_to_worldcover", tile=128, ratios=SplitRatios(train=0.5, test=0.5))
    ds = import_pairs(root / "images", root / "masks", cfg, tmp_path / "lv")
    assert len(ds) == 2 * 64 and ds.split("train") and ds.split("test")
    present = {c for c, n in ds.class_frequencies().items() if n > 0}
    assert present <= {10, 30, 40, 50, 60, 80} and {40, 50} <= present


def test_flair_rgb_masks(shared_data, tmp_path):
    root = shared_data / "pairs" / "flair"
    native = import_pairs(root / "images", root / "masks", PairImportConfig(scheme="flair"), tmp_path / "n")
    mapped = import_pairs(root / "images", root / "masks",
                          PairImportConfig(scheme="flair", remap="flair_to_worldcover"), tmp_path / "w")  # fmt: skip
    assert len(native) == len(mapped) == 3 * 64 and native.scheme.name == "flair"
    lut = np.zeros(256, np.uint8)
    for k, v in {1: 50, 2: 50, 3: 50, 4: 60, 5: 80, 6: 10, 7: 10, 8: 20, 9: 40, 10: 30, 11: 40, 12: 60, 13: 50,
                 14: 70, 15: 10, 16: 10, 17: 10, 18: 50, 19: 0}.items():  # fmt: skip
        lut[k] = v
    for a, b in zip(native.records[:20], mapped.records[:20]):
        assert a.id == b.id and (lut[native.read_label(a)] == mapped.read_label(b)).all()


@pytest.mark.shared
def test_naip_chesapeake_codes_and_remap(shared_data, tmp_path):
    root = shared_data / "pairs" / "naip-chesapeake"
    # 128 px tiles cover the 256 px patches whole: the shares are those of every pixel
    native = import_pairs(root / "images", root / "masks", PairImportConfig(scheme="chesapeake7", tile=128), tmp_path / "n")
    mapped = import_pairs(root / "images", root / "masks",
                          PairImportConfig(scheme="chesapeake7", remap="chesapeake7_to_worldcover", tile=128),
                          tmp_path / "w")  # fmt: skip
    assert len(native) == len(mapped) == 16 * 4 and native.scheme.name == "chesapeake7"
    assert sum(1 for r in native.split("test") if r.id.endswith("r00000_c00000")) == 3  # 16 images at 0.8 / 0.2
    freq = native.class_frequencies()
    assert 0.74 < freq[2] < 0.80 and 0.20 < freq[3] < 0.26  # tree canopy, low vegetation as published
    assert freq[1] == freq[4] == 0 and 0 < freq[5] + freq[6] < 0.01
    wc = mapped.class_frequencies()
    assert wc[10] == pytest.approx(freq[2]) and wc[30] == pytest.approx(freq[3]) and wc[50] == pytest.approx(freq[5] + freq[6])
    lut = np.zeros(256, np.uint8)
    for k, v in {1: 80, 2: 10, 3: 30, 4: 60, 5: 50, 6: 50, 15: 0}.items():
        lut[k] = v
    for a, b in zip(native.records, mapped.records):
        assert a.id == b.id and (lut[native.read_label(a)] == mapped.read_label(b)).all()
