"""Cut WorldCover 2021 (São Tomé / Príncipe) into 64x64 label-only training tiles.

Stand-in until ``terrasynth data acquire --source local --product landcover`` lands on
main. Reads the 36,000² raster block by block (never whole), keeps tiles whose land
fraction (not nodata 0, not water/ocean 80) is at least ``--min-land``, and writes a
label-only terrasynth dataset. The split is spatial: 512-px super-blocks are assigned
to train/val so that neighbouring tiles never straddle splits.

    python benchmarks/make_worldcover_tiles.py --src /work/shared/data/worldcover/ESA_WorldCover_10m_2021_v200_N00E006_Map.tif \
        --out /work/tmp/landcover/wc64
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm import tqdm

from terrasynth.classes import WORLDCOVER
from terrasynth.config import config_hash
from terrasynth.data.dataset import DatasetInfo, DatasetWriter, provenance


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--min-land", type=float, default=0.5)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    args = ap.parse_args()
    t, block = args.tile, 1024
    params = {"src": Path(args.src).name, "tile": t, "min_land": args.min_land, "val": args.val_fraction}
    info = DatasetInfo(
        name="worldcover-saotome-64", kind="real", scheme=WORLDCOVER, tile_size=t, gsd=10.0, has_images=False,
        provenance=provenance(f"file://{Path(args.src).resolve()}", config_hash=config_hash(params), params=params),
    )  # fmt: skip
    with rasterio.open(args.src) as src, DatasetWriter(args.out, info) as w:
        # A 1/32 overview tells which 1024-px blocks hold any land: only those are read.
        f = 32
        ov = src.read(1, out_shape=(src.height // f, src.width // f), resampling=Resampling.nearest)
        land_ov = (ov != 0) & (ov != 80)
        blocks = [
            (r, c)
            for r in range(0, src.height, block)
            for c in range(0, src.width, block)
            if land_ov[r // f : (r + block) // f + 1, c // f : (c + block) // f + 1].any()
        ]
        for r0, c0 in tqdm(blocks, desc="blocks", unit="block"):
            win = Window(c0, r0, min(block, src.width - c0), min(block, src.height - r0))
            a = src.read(1, window=win)
            for i in range(0, a.shape[0] - t + 1, t):
                for j in range(0, a.shape[1] - t + 1, t):
                    tile = a[i : i + t, j : j + t]
                    land = np.count_nonzero((tile != 0) & (tile != 80)) / tile.size
                    if land < args.min_land:
                        continue
                    row, col = r0 + i, c0 + j
                    tid = f"r{row:05d}_c{col:05d}"
                    if w.has(tid):
                        continue
                    sb = f"{row // 512}_{col // 512}".encode()
                    split = "val" if int(hashlib.sha1(sb).hexdigest()[:8], 16) / 2**32 < args.val_fraction else "train"
                    tr = src.window_transform(Window(col, row, t, t))
                    w.write(tid, split, tile, source=Path(args.src).name, crs=src.crs, transform=tr)
        ds = w.finalize()
    print(f"{len(ds)} tiles: {ds.info.to_json(ds.records)['splits']}")


if __name__ == "__main__":
    main()
