"""Benchmark: aligned 256x256 RGB + WorldCover pairs, terrasynth `data acquire` vs torchgeo.

Both read the same local files: the real 36,000 x 36,000 px WorldCover 2021 tile
(EPSG:4326) and a NAIP-like 4-band RGBN COG at 1 m on UTM 32N over São Tomé, rendered from
WorldCover colours plus noise (so it compresses like imagery) and written with NAIP's band
flags. torchgeo: ``NAIP & WorldCover`` (an IntersectionDataset of its NAIP dataset and a
WorldCover RasterDataset subclass) sampled with ``GridGeoSampler(size=256, stride=256)``,
each sample written as the same two GeoTIFFs terrasynth writes (identical output format).
Each side runs in its own subprocess, so its peak RSS is its own.

    flock /work/heavy.lock python benchmarks/bench_acquire.py [--size 6144] [--workers 1 2]

Two measurements: ``memory`` (aligned pairs as arrays: terrasynth's ``iter_pairs`` vs the
torchgeo DataLoader) and ``disk`` (the same pairs written as GeoTIFF tiles by both).

Needs the `bench` extra (torchgeo) and the shared data (``$TERRASYNTH_SHARED_DATA``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("TERRASYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
WC = SHARED / "worldcover" / "ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"
NAIP_NAME = "m_0000645_ne_32_100_20210914.tif"  # NAIP's file naming, so torchgeo's NAIP dataset finds it
ORIGIN = (240000.0, 42000.0)  # UTM 32N, over São Tomé's north-east
TILE = 256


def make_naip(path: Path, size: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.vrt import WarpedVRT

    sys.path.insert(0, str(ROOT / "tests"))
    from geo_fixtures import palette, write_cog

    tr = from_origin(*ORIGIN, 1.0, 1.0)
    with rasterio.open(WC) as src, WarpedVRT(src, crs="EPSG:32632", transform=tr, width=size, height=size,
                                             resampling=Resampling.nearest, nodata=0) as vrt:  # fmt: skip
        codes = vrt.read(1)
    rng = np.random.default_rng(0)
    rgb = palette()[codes].astype(np.int16) + rng.normal(0, 12, (size, size, 3)).astype(np.int16)
    rgb = np.clip(rgb, 1, 255).astype(np.uint8)
    nir = np.clip(rng.normal(150, 30, (size, size)), 1, 255).astype(np.uint8)
    write_cog(path, np.concatenate([np.moveaxis(rgb, -1, 0), nir[None]]), "EPSG:32632", tr)


def _cfg(naip: Path, workers: int):
    from terrasynth.data.acquire import AcquireConfig

    # block_size 1e7 m: one split block over the scene, so no tile is dropped at a block edge
    # and both tools produce the same tile set; max_nodata 1: no filtering either.
    return AcquireConfig(source="local", product="pairs", landcover=[str(WC)], imagery=[str(naip)], tile=TILE,
                         gsd="native", max_nodata=1.0, block_size=1e7, workers=workers)  # fmt: skip


def run_terrasynth(naip: Path, out: Path, workers: int, mode: str) -> dict:
    from terrasynth.data.acquire import acquire, iter_pairs

    os.environ["TQDM_DISABLE"] = "1"
    t0 = time.perf_counter()
    if mode == "disk":
        n = len(acquire(_cfg(naip, workers), out))
    else:
        n = 0
        for _scene, tile in iter_pairs(_cfg(naip, workers)):
            assert tile.image.shape == (TILE, TILE, 3) and tile.label.shape == (TILE, TILE)
            n += 1
    return {"tiles": n, "seconds": time.perf_counter() - t0}


def run_torchgeo(naip: Path, out: Path, mode: str) -> dict:
    import numpy as np
    import torch
    from rasterio.transform import from_origin
    from torch.utils.data import DataLoader
    from torchgeo.datasets import NAIP, RasterDataset
    from torchgeo.samplers import GridGeoSampler

    from terrasynth.classes import WORLDCOVER
    from terrasynth.data.dataset import write_image_tif, write_label_tif

    class WorldCover(RasterDataset):
        filename_glob = "ESA_WorldCover_10m_2021_v200_*_Map.tif"
        is_image = False

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = NAIP(paths=[str(naip)], bands=("R", "G", "B")) & WorldCover(paths=[str(WC)])
    sampler = GridGeoSampler(ds, size=TILE, stride=TILE)
    loader = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=0)
    if mode == "disk":
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "labels").mkdir(parents=True, exist_ok=True)
    n = 0
    for sample in loader:
        img = sample["image"].numpy().round().clip(0, 255).astype(np.uint8)
        lab = sample["mask"].numpy().astype(np.uint8)
        assert img.shape == (3, TILE, TILE) and lab.shape == (TILE, TILE)
        if mode == "disk":  # the same files terrasynth writes
            x, y = sample["bounds"][0], sample["bounds"][1]
            tr = from_origin(x.start, y.stop, 1.0, 1.0)
            tid = f"{int(x.start)}_{int(y.stop)}"
            write_image_tif(out / "images" / f"{tid}.tif", np.moveaxis(img, 0, -1), "EPSG:32632", tr)
            write_label_tif(out / "labels" / f"{tid}.tif", lab, WORLDCOVER, "EPSG:32632", tr)
        n += 1
    return {"tiles": n, "seconds": time.perf_counter() - t0}


def compare(ours: Path, theirs: Path) -> dict:
    """Match tiles by their top-left corner; images must be equal, labels are compared per pixel."""
    import numpy as np
    import rasterio

    from terrasynth.data.dataset import Dataset

    ds = Dataset.open(ours)
    by_corner = {(round(r.bounds[0]), round(r.bounds[3])): r for r in ds.records}
    matched = img_equal = 0
    lab_px = lab_eq = 0
    for p in sorted((theirs / "labels").glob("*.tif")):
        x, y = (int(v) for v in p.stem.split("_"))
        rec = by_corner.get((x, y))
        if rec is None:
            continue
        matched += 1
        with rasterio.open(theirs / "images" / p.name) as a:
            img_equal += int((np.moveaxis(a.read(), 0, -1) == ds.read_image(rec)).all())
        with rasterio.open(p) as a:
            t = a.read(1)
        o = ds.read_label(rec)
        lab_px += o.size
        lab_eq += int((t == o).sum())
    return {"tiles_matched": matched, "images_identical": img_equal, "label_pixel_agreement": lab_eq / max(lab_px, 1)}


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the image after exec; ru_maxrss would also
    count the pages of the forked parent (which held the rendered scene)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    naip, out = Path(args.naip), Path(args.out)
    if args.child == "torchgeo":
        res = run_torchgeo(naip, out, args.mode)
    else:
        res = run_terrasynth(naip, out, args.workers[0], args.mode)
    res["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=6144, help="NAIP-like scene side in pixels (1 m)")
    ap.add_argument("--workdir", default="/tmp/terrasynth-bench-acquire")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="terrasynth worker counts to run")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the runs this many times, keep the best")
    ap.add_argument("--child", choices=["torchgeo", "terrasynth"])
    ap.add_argument("--mode", choices=["memory", "disk"], default="disk")
    ap.add_argument("--naip")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not WC.is_file():
        sys.exit(f"{WC}: shared WorldCover tile not found; set TERRASYNTH_SHARED_DATA")
    work = Path(args.workdir)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    naip = work / "naip" / NAIP_NAME
    naip.parent.mkdir()
    t0 = time.perf_counter()
    make_naip(naip, args.size)
    print(f"NAIP-like scene {args.size}x{args.size} px written in {time.perf_counter() - t0:.1f}s "
          f"({naip.stat().st_size / 2**20:.0f} MiB)", flush=True)  # fmt: skip
    runs = [("torchgeo", "memory", 0), ("terrasynth", "memory", 1), ("torchgeo", "disk", 0)]
    runs += [("terrasynth", "disk", w) for w in args.workers]
    results: dict[str, dict] = {}
    for kind, mode, w in runs * args.repeat:  # alternating repeats; the best of each is kept
        name = f"{kind}-{mode}" + (f"-w{w}" if kind == "terrasynth" else "")
        shutil.rmtree(work / name, ignore_errors=True)  # a repeat must not find the finished dataset
        cmd = [sys.executable, __file__, "--child", kind, "--mode", mode, "--naip", str(naip),
               "--out", str(work / name), "--workers", str(max(w, 1))]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode or not line:
            sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
        res = json.loads(line[0][7:])
        res["tiles_per_s"] = res["tiles"] / res["seconds"]
        print(f"{name:22s} {res['tiles']:5d} tiles in {res['seconds']:6.1f}s = {res['tiles_per_s']:6.1f} tiles/s, "
              f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
        if name not in results or res["tiles_per_s"] > results[name]["tiles_per_s"]:
            results[name] = res
    for name, res in results.items():
        mode = "memory" if "-memory" in name else "disk"
        res["speedup_vs_torchgeo"] = res["tiles_per_s"] / results[f"torchgeo-{mode}"]["tiles_per_s"]
    print("best of", args.repeat, ": " + ", ".join(f"{k} {v['tiles_per_s']:.1f} tiles/s ({v['speedup_vs_torchgeo']:.2f}x)"
                                              for k, v in results.items()))  # fmt: skip
    cmp = compare(work / "terrasynth-disk-w1", work / "torchgeo-disk")
    print("output check: " + json.dumps(cmp))
    print(json.dumps({"results": results, "compare": cmp, "size": args.size, "tile": TILE}, indent=1))


if __name__ == "__main__":
    main()
