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


def test_runner_checkpoints_keep_n_atomic_and_fall_back_past_a_damaged_one(tmp_path):
    from terrasynth.accel import make_accelerator
    from terrasynth.train.runner import Runner, RunSpec

    class Counter:
        def __init__(self, runner, stop_after=None):
            net = torch.nn.Linear(2, 1)
            self.net, self.opt = runner.prepare(net, torch.optim.SGD(net.parameters(), lr=0.1))
            self.stop_after = stop_after

        def training_step(self, step, gen):
            return self.net(torch.randn(4, 2, generator=gen)).pow(2).mean()

        def after_step(self, step, logs):
            if step == self.stop_after:
                raise KeyboardInterrupt  # killed before this step's checkpoint

    def runner(steps, stop_after=None):
        r = Runner(RunSpec("s", max_steps=steps, checkpoint_every=1, keep_checkpoints=2),
                   make_accelerator(mixed_precision="no"), tmp_path, {}, progress=False)  # fmt: skip
        return r, Counter(r, stop_after)

    r, fam = runner(8, stop_after=6)  # interrupted: checkpoints of steps 4 and 5 (6 is never saved)
    with pytest.raises(KeyboardInterrupt):
        r.fit(fam)
    assert [p.name for p in r.checkpoints()] == ["step-00000004", "step-00000005"]
    # What a kill during the next save leaves: a temporary folder. The newest checkpoint is then damaged.
    (r.ckpt_dir / ".step-00000006.tmp").mkdir()
    for f in r.checkpoints()[-1].iterdir():
        f.write_bytes(f.read_bytes()[:100])
    r2, fam2 = runner(7)
    res = r2.fit(fam2)
    assert res.resumed_from == 4 and res.steps == 7
    assert not list(r2.ckpt_dir.glob(".step-*"))
    # a finished run keeps only its final state (enough to extend the budget), not the guards
    assert [p.name for p in r2.checkpoints()] == ["step-00000007"]


@pytest.mark.slow
def test_spade_keeps_only_the_best_n_snapshots(tmp_path):
    from conftest import SPADE_TINY as TINY, spade_pairs as make_pairs

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
