"""Resource bounds: checkpoints are written atomically and only the configured number is kept;
data preparation reads windows, so its memory does not grow with the area or the source size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import run_cli
from reliability_util import env


def test_segment_checkpoints_keep_n_atomic_and_fall_back_past_a_damaged_one(tmp_path):
    from terrasynth.io import TMP_PREFIX
    from terrasynth.train.segmentation import Checkpoints

    ck = Checkpoints(tmp_path, keep=2)
    for step in range(1, 6):
        ck.save({"step": step, "w": torch.full((4,), float(step))})
    assert [p.name for p in ck.paths()] == ["step-00000004.pt", "step-00000005.pt"]
    # What a kill during the next save leaves: a temporary file. The newest checkpoint is then damaged.
    (ck.dir / f"{TMP_PREFIX}step-00000006-x.pt").write_bytes(b"half a checkpoint")
    newest = ck.paths()[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    again = Checkpoints(tmp_path, keep=2)
    assert not list(again.dir.glob(f"{TMP_PREFIX}*"))
    state = again.latest()
    assert state["step"] == 4 and torch.equal(state["w"], torch.full((4,), 4.0))


@pytest.mark.slow
def test_spade_keeps_only_the_best_n_snapshots(tmp_path):
    from test_spade import TINY, make_pairs

    data = make_pairs(tmp_path / "pairs")
    out = tmp_path / "run"
    assert run_cli("spade", "train", "--data", data, "--out", out, "--max-steps", 8, *TINY,
                   "--set", "select.keep=2", "--set", "checkpoint_every=2") == 0  # fmt: skip
    snaps = sorted((out / "checkpoints").glob("step_*.safetensors"))
    assert len(snaps) == 2
    gen = json.loads((out / "generator.json").read_text())
    assert (out / gen["checkpoint"]).is_file() and not list(out.rglob(".tmp-*"))


def _peak_rss_mb(args: list[object]) -> float:
    """Peak RSS (MB) of ``terrasynth ARGS`` in a fresh child: VmHWM of its own address space (ru_maxrss
    would not do: Linux carries it across execve, so the child would report the test process's peak)."""
    code = ("import sys, runpy; sys.argv = ['terrasynth', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('terrasynth', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print('PEAK', int(hwm.split()[1]) / 1024)")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code, "-q", *map(str, args)], capture_output=True, text=True, env=env())
    assert p.returncode == 0, p.stderr
    return float(p.stdout.split("PEAK")[-1])


@pytest.mark.slow
def test_acquire_memory_does_not_grow_with_the_area(shared_data, tmp_path):
    """Tiling 25x more of the 36,000² WorldCover tile costs about the same peak memory, far below the
    ~1.3 GB a whole-raster read needs (docs/reliability.md has the figures)."""
    wc = shared_data / "worldcover" / "ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"
    if not wc.exists():
        pytest.skip("WorldCover tile absent")
    peaks = {}
    for name, half in (("small", 0.01), ("large", 0.05)):  # 240² px vs 1,200² px of land cover
        bbox = f"{6.6 - half},{0.3 - half},{6.6 + half},{0.3 + half}"
        peaks[name] = _peak_rss_mb(["data", "acquire", "--product", "landcover", "--landcover", wc, "--bbox", bbox,
                                    "--tile", 64, "--gsd", "native", "--out", tmp_path / name])  # fmt: skip
    print("peak RSS MB", peaks)
    (tmp_path / "peaks.json").write_text(json.dumps(peaks))
    assert peaks["large"] < 700, peaks
    assert peaks["large"] - peaks["small"] < 150, peaks
