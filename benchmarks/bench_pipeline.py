"""Pipeline wall time per stage (the demo by default), and what a rerun of the finished run costs.

    python benchmarks/bench_pipeline.py [--config configs/demo.yaml] [--out DIR] [--set k=v ...]

Runs the config once from scratch (per-stage wall times, share of the total), then again on the
same run directory: every stage must be served from its cache, and the second run's time is
reported as a ratio of the first (the baseline).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from terrasynth.config import load_config
from terrasynth.pipeline import PipelineConfig, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--out", help="run directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(PipelineConfig, args.config, sets=args.sets)
    tmp = None if args.out else tempfile.mkdtemp(prefix="bench-pipeline-")
    run = Path(args.out or tmp)
    try:
        t0 = time.perf_counter()
        first = run_pipeline(cfg, run, progress=False)
        full = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = run_pipeline(cfg, run, progress=False)
        rerun = time.perf_counter() - t0
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    assert all(s["status"] == "cached" for s in second["stages"].values()), "a rerun must be fully cached"
    print(f"{'stage':<16} {'seconds':>8} {'share':>7}")
    for stage, s in first["stages"].items():
        print(f"{stage:<16} {s['seconds']:>8.1f} {s['seconds'] / full:>7.1%}")
    print(f"{'total':<16} {full:>8.1f}")
    print(f"rerun of the finished run: {rerun:.1f} s = {rerun / full:.4f}x the full run (baseline)")
    print(json.dumps({"full_s": full, "rerun_s": rerun, "stages": {k: v["seconds"] for k, v in first["stages"].items()}}))


if __name__ == "__main__":
    main()
