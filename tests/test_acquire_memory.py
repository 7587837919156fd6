"""Source size must not matter: tiling the whole 36,000 x 36,000 px WorldCover tile (1.3 GB
if read at once) stays under 1 GB of peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WC2021 = "worldcover/ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"


# The child reports its own high-water mark (VmHWM belongs to the process image after exec;
# ru_maxrss would include the forked pytest parent's pages).
CHILD = """
import re, sys
from terrasynth.cli import main
rc = main(sys.argv[1:])
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())
print("PEAK_MB", int(hwm.group(1)) / 1024 if hwm else -1)
sys.exit(rc)
"""


@pytest.mark.slow
def test_full_worldcover_tile_peak_rss_under_1gb(shared_data, tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the peak RSS")
    out = tmp_path / "full"
    r = subprocess.run(
        [sys.executable, "-c", CHILD, "-q", "data", "acquire", "--source", "local", "--product", "landcover",
         "--landcover", str(shared_data / WC2021), "--tile", "512", "--max-class-fraction", "0+80:0.9",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    peak_mb = float(r.stdout.split("PEAK_MB")[-1])
    assert 0 < peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["extra"]["stats"]["candidates"] == 70 * 70  # every 512 px tile of the 36,000 px raster was looked at
    assert set(meta["splits"]) == {"train", "val", "test"}  # blocks were dealt among land, not open ocean
    print(f"full tile: {meta['num_tiles']} tiles kept of 4900, peak RSS {peak_mb:.0f} MB")
