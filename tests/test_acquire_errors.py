"""Bad input to `data acquire` is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import run_cli
from geo_fixtures import write_cog


@pytest.fixture
def inputs(tmp_path):
    tr = from_origin(6.70, 0.31, 1 / 12000, 1 / 12000)
    good = write_cog(tmp_path / "wc.tif", np.full((1, 128, 128), 10, np.uint8), "EPSG:4326", tr, nodata=0)
    unknown = write_cog(tmp_path / "odd.tif", np.full((1, 128, 128), 7, np.uint8), "EPSG:4326", tr, nodata=0)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 100)
    no_crs = tmp_path / "nocrs.tif"
    with rasterio.open(no_crs, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(np.full((1, 64, 64), 10, np.uint8))
    return {"good": good, "unknown": unknown, "corrupt": corrupt, "no_crs": no_crs}


@pytest.mark.parametrize(
    "case, args, needle",
    [
        ("corrupt", ["--landcover", "{corrupt}"], "cannot be opened"),
        ("no_crs", ["--landcover", "{no_crs}"], "no CRS"),
        ("unknown", ["--landcover", "{unknown}", "--max-nodata", "1"], "[7]"),
        ("glob", ["--landcover", "{dir}/nothing-*.tif"], "no files match"),
        ("gsd", ["--landcover", "{good}", "--gsd", "fine"], "--gsd"),
        ("crs", ["--landcover", "{good}", "--gsd", "10", "--crs", "EPSG:99999"], "--crs"),
        ("fraction", ["--landcover", "{good}", "--max-class-fraction", "80"], "CODES:FRACTION"),
        ("tile", ["--landcover", "{good}", "--tile", "0"], "tile"),
        ("static", ["--source", "static"], "--catalog"),
        ("stac", ["--source", "stac", "--bbox", "6,0,7,1"], "--stac-url"),
        ("pairs", ["--product", "pairs", "--landcover", "{good}"], "--imagery"),
    ],
)
def test_bad_input_is_one_line_exit_2(inputs, tmp_path, capsys, case, args, needle):
    fmt = {k: str(v) for k, v in inputs.items()} | {"dir": str(tmp_path)}
    argv = ["-q", "data", "acquire", "--product", "landcover", "--tile", "32", *[a.format(**fmt) for a in args],
            "--out", str(tmp_path / "out")]  # fmt: skip
    rc = run_cli(*argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, (case, err)
    assert len(err.splitlines()) == 1 and err.startswith("terrasynth: error:") and "Traceback" not in err, err
    assert needle in err, err


def test_remap_turns_another_scheme_into_worldcover(tmp_path):
    """Land cover in another scheme (DroneDeploy's 0..5, where 0 is a class) via --remap."""
    from terrasynth.data.dataset import Dataset

    codes = np.repeat(np.repeat(np.array([[0, 2], [3, 4]], np.uint8), 64, 0), 64, 1)
    src = write_cog(tmp_path / "dd.tif", codes[None], "EPSG:32618", from_origin(500000, 4500000, 1.0, 1.0))
    rc = run_cli("-q", "data", "acquire", "--product", "landcover", "--landcover", src, "--remap",
                 "dronedeploy_to_worldcover", "--tile", "64", "--max-nodata", "0", "--block-size", "1e6",
                 "--out", tmp_path / "out")  # fmt: skip
    ds = Dataset.open(tmp_path / "out")
    assert rc == 0 and len(ds) == 4
    got = sorted(int(np.unique(ds.read_label(r))[0]) for r in ds.records)
    assert got == [10, 50, 60, 80]  # building -> 50, vegetation -> 10, water -> 80, ground -> 60
