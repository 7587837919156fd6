"""Pair import speed on the shared DroneDeploy sample (180 pairs of 300 x 300 -> 2,880 tiles of 64).

    flock /work/heavy.lock python benchmarks/bench_import.py [--data ../shared/data]

Baseline, measured in the same run: the I/O floor, i.e. writing the same 2,880 tiles (already
decoded, in memory) with the same DatasetWriter and write threads. The ratio is the import's overhead for
finding, checking, decoding and cutting the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.data.tile_sink import ThreadedWrites
from terrasynth.data.importers import PairImportConfig, import_pairs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    default = os.environ.get("TERRASYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")
    ap.add_argument("--data", type=Path, default=Path(default))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    dd = args.data / "pairs" / "dronedeploy"
    if not dd.is_dir():
        raise SystemExit(f"{dd}: shared DroneDeploy pairs not found; pass --data")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, cfg in {
            "native": PairImportConfig(scheme="dronedeploy", tile=64, stride=64),
            "remap_worldcover": PairImportConfig(scheme="dronedeploy", remap="dronedeploy_to_worldcover", tile=64),
        }.items():
            t = time.perf_counter()
            ds = import_pairs(dd / "images", dd / "masks", cfg, tmp / name)
            dt = time.perf_counter() - t
            res[name] = {"tiles": len(ds), "seconds": dt, "tiles_per_s": len(ds) / dt}
        ds = Dataset.open(tmp / "native")
        tiles = [(r, ds.read_label(r), ds.read_image(r)) for r in ds.records]
        info = DatasetInfo(name="floor", kind="real", scheme=ds.scheme, tile_size=64,
                           provenance=provenance("floor", config_hash="floor"))  # fmt: skip
        t = time.perf_counter()
        with DatasetWriter(tmp / "floor", info) as w:
            with ThreadedWrites(w) as sink:
                for r, lab, img in tiles:
                    sink.submit(r.id, r.split, lab, img)
            w.finalize()
        res["io_floor"] = {"tiles": len(tiles), "seconds": time.perf_counter() - t}
        res["io_floor"]["tiles_per_s"] = len(tiles) / res["io_floor"]["seconds"]
        res["native"]["x_io_floor"] = res["native"]["seconds"] / res["io_floor"]["seconds"]
        shutil.rmtree(tmp / "floor")
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
