"""The one training runner: budgets, schedule, EMA, probe, checkpoints, exact resume, refusals."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

import pytest
import torch

from terrasynth.accel import make_accelerator
from terrasynth.errors import UserError
from terrasynth.train.runner import RunSpec, Runner, effective_warmup, ema_copy, fingerprint, lr_factor


class Regression:
    """A tiny family: fit y = x @ w with a batch drawn from the step's generator."""

    def __init__(self, runner: Runner, stop_at: int | None = None):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 1)
        opt = torch.optim.AdamW(net.parameters(), lr=0.05)
        self.net, self.opt = runner.prepare(net, opt)
        self.stop_at = stop_at
        self.seen: list[int] = []
        self.ends = 0

    def training_step(self, step, gen):
        if self.stop_at is not None and step == self.stop_at:
            raise KeyboardInterrupt
        x = torch.randn(8, 4, generator=gen)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.seen.append(step)
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_end(self, step):
        self.ends += 1

    def state_dict(self):
        return {"seen": len(self.seen)}

    def load_state_dict(self, d):
        self.seen = list(range(d["seen"]))


def _run(tmp_path, spec, *, resume=True, stop_at=None, fp=None, ema=False):
    acc = make_accelerator(mixed_precision="no", cpu=True)
    runner = Runner(spec, acc, tmp_path, fp or fingerprint({"lr": 0.05}), resume=resume, progress=False)
    fam = Regression(runner, stop_at)
    if ema:
        runner.track_ema(runner.unwrap(fam.net).parameters())
    return runner, fam


def weights(fam):
    return torch.cat([p.detach().flatten() for p in fam.net.parameters()])


def test_schedules_anneal_within_the_budget():
    assert lr_factor("cosine", 0, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor("cosine", 500, 10, 0.5) == pytest.approx(0.5)
    assert lr_factor("cosine", 999, 10, 1.0) == pytest.approx(0.0)
    assert lr_factor("constant", 999, 0, 1.0) == 1.0
    assert lr_factor("onecycle", 0, 0, 0.0) == pytest.approx(0.04)
    assert lr_factor("onecycle", 0, 0, 0.3) == pytest.approx(1.0)
    assert lr_factor("onecycle", 0, 0, 1.0) == pytest.approx(0.0, abs=1e-9)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    spec = RunSpec("reg", max_steps=30, checkpoint_every=5, warmup_steps=3, ema_decay=0.9)
    r1, f1 = _run(tmp_path / "a", spec, ema=True)
    res = r1.fit(f1)
    assert res.steps == 30 and res.resumed_from is None
    ref, ref_ema = weights(f1), ema_copy(r1, f1.net).weight.clone()

    r2, f2 = _run(tmp_path / "b", spec, stop_at=17, ema=True)
    with pytest.raises(KeyboardInterrupt):
        r2.fit(f2)
    r3, f3 = _run(tmp_path / "b", spec, ema=True)
    res3 = r3.fit(f3)
    assert res3.resumed_from == 15 and res3.steps == 30
    assert f3.seen[:15] == list(range(15)) and f3.seen[15:] == list(range(15, 30))  # family state restored
    assert torch.equal(weights(f3), ref)
    assert torch.equal(ema_copy(r3, f3.net).weight, ref_ema)
    assert not torch.equal(ref_ema, f3.net.weight)  # the EMA is not the raw weights


def test_a_finished_run_is_not_retrained_and_keeps_its_final_checkpoint(tmp_path):
    spec = RunSpec("reg", max_steps=12, checkpoint_every=3, keep_checkpoints=2)
    r, f = _run(tmp_path, spec)
    r.fit(f)
    assert [p.name for p in r.checkpoints()] == ["step-00000012"]
    r2, f2 = _run(tmp_path, spec)
    res = r2.fit(f2)
    assert res.steps == 12 and f2.seen == list(range(12)) and f2.ends == 0
    assert torch.equal(weights(f2), weights(f))
    # a larger budget continues the finished run
    r3, f3 = _run(tmp_path, RunSpec("reg", max_steps=15, checkpoint_every=3))
    assert r3.fit(f3).steps == 15 and f3.seen[-3:] == [12, 13, 14]


def test_changed_config_is_refused_and_restart_starts_over(tmp_path):
    spec = RunSpec("reg", max_steps=6, checkpoint_every=3)
    r, f = _run(tmp_path, spec)
    r.fit(f)
    r2, f2 = _run(tmp_path, spec, fp=fingerprint({"lr": 0.1}))
    with pytest.raises(UserError, match=r"different lr \(0.05 vs 0.1\).*--restart"):
        r2.fit(f2)
    # budget keys may change without refusal
    r3, f3 = _run(
        tmp_path, RunSpec("reg", max_steps=8, checkpoint_every=3), fp=fingerprint({"lr": 0.05, "max_steps": 8})
    )
    assert r3.fit(f3).steps == 8
    r4, f4 = _run(tmp_path, spec, fp=fingerprint({"lr": 0.1}), resume=False)
    res = r4.fit(f4)
    assert res.resumed_from is None and f4.seen == list(range(6))


def test_corrupt_latest_checkpoint_falls_back_and_says_from_which_step(tmp_path, caplog):
    spec = RunSpec("reg", max_steps=9, checkpoint_every=3, keep_checkpoints=3)
    r, f = _run(tmp_path, spec, stop_at=8)
    with pytest.raises(KeyboardInterrupt):
        r.fit(f)
    latest = r.checkpoints()[-1]
    assert latest.name == "step-00000006"
    for p in latest.iterdir():
        p.write_bytes(p.read_bytes()[:10])  # truncated
    r2, f2 = _run(tmp_path, spec)
    with caplog.at_level("WARNING"):
        res = r2.fit(f2)
    assert res.resumed_from == 3
    assert "resuming from step 3" in caplog.text


def test_all_checkpoints_unreadable_starts_over_and_says_so(tmp_path, caplog):
    spec = RunSpec("reg", max_steps=6, checkpoint_every=3)
    r, f = _run(tmp_path, spec, stop_at=5)
    with pytest.raises(KeyboardInterrupt):
        r.fit(f)
    for c in r.checkpoints():
        for p in c.iterdir():
            p.write_bytes(b"")
    r2, f2 = _run(tmp_path, spec)
    with caplog.at_level("WARNING"):
        assert r2.fit(f2).resumed_from is None
    assert "starting over from step 0" in caplog.text


def test_speed_probe_sizes_steps_and_the_sized_run_is_reproducible(tmp_path):
    spec = RunSpec("reg", max_steps=10**6, target_minutes=0.002, checkpoint_every=10**6)  # 0.12 s
    r, f = _run(tmp_path / "a", spec)
    res = r.fit(f)
    assert res.probe is not None and res.probe["steps"] == res.max_steps == res.steps
    assert 1 <= res.steps < 10**6
    assert f.seen == list(range(res.steps))  # the probe's steps were undone: training began at step 0
    # the same steps given explicitly give the same weights
    r2, f2 = _run(tmp_path / "b", RunSpec("reg", max_steps=res.steps, checkpoint_every=10**6))
    r2.fit(f2)
    assert torch.equal(weights(f2), weights(f))
    # a rerun of the sized run with the target config resumes from its chosen steps, no new probe
    r3, f3 = _run(tmp_path / "a", spec)
    assert r3.fit(f3).steps == res.steps and f3.seen == list(range(res.steps))


class Slow(Regression):
    """Each step takes at least 50 ms."""

    def training_step(self, step, gen):
        time.sleep(0.05)
        return super().training_step(step, gen)


def test_the_probes_seconds_count_toward_the_target(tmp_path):
    """A 0.6 s target with 50 ms steps: the 6 probe steps take 0.3 s of it (at the measured speed), so at
    most 6 steps are left (sizing on the whole target would give 12: the stage overran by the probe)."""
    spec = RunSpec("slow", max_steps=10**6, target_minutes=0.01, checkpoint_every=10**6)
    acc = make_accelerator(mixed_precision="no", cpu=True)
    r = Runner(spec, acc, tmp_path, fingerprint({"lr": 0.05}), progress=False)
    res = r.fit(Slow(r))
    p = res.probe
    assert p is not None and p["seconds_per_step"] >= 0.05 and p["probe_seconds"] == 6 * p["seconds_per_step"]
    assert p["steps"] == res.steps == max(1, int(max(0.0, 0.6 - p["probe_seconds"]) / p["seconds_per_step"]))
    assert 1 <= res.steps <= 6
    # a family whose probed steps are shared by several runs (segmenters) keeps the whole target
    r2 = Runner(replace(spec, probe_in_target=False), acc, tmp_path / "shared", fingerprint({"lr": 0.05}), progress=False)
    p2 = r2.fit(Slow(r2)).probe
    assert p2["probe_seconds"] == 0.0 and p2["steps"] == int(0.6 / p2["seconds_per_step"])


def test_warm_up_is_at_most_a_tenth_of_the_steps_that_run(tmp_path):
    """The demo's ControlNet (cap 300, warm-up 100) was sized to 78 steps by the probe and trained
    its whole run in warm-up, at under a fifth of its learning rate: the warm-up follows the run."""
    assert effective_warmup(100, 4000) == 100 and effective_warmup(100, 300) == 30
    assert effective_warmup(100, 78) == 8 and effective_warmup(100, 3) == 1 and effective_warmup(0, 78) == 0

    class Recorder(Regression):
        lrs: list[float] = []

        def training_step(self, step, gen):
            self.lrs.append(self.opt.param_groups[0]["lr"])
            return super().training_step(step, gen)

    acc = make_accelerator(mixed_precision="no", cpu=True)
    spec = RunSpec("probed", max_steps=10**6, target_minutes=0.002, warmup_steps=10**5, checkpoint_every=10**6)
    runner = Runner(spec, acc, tmp_path, fingerprint({}), progress=False)
    fam = Recorder(runner)
    res = runner.fit(fam)
    assert res.steps >= 20, "the probe should size this tiny model to many steps"
    lrs = fam.lrs[-res.steps:]  # the probe's steps come first
    warm = effective_warmup(10**5, res.steps)
    assert warm == -(-res.steps // 10)
    assert max(lrs) > 0.05 * 0.8  # the peak is reached, not a fifth of it
    assert lrs.index(max(lrs)) in (warm - 1, warm)


def test_wall_time_budget_stops_and_anneals(tmp_path):
    spec = RunSpec("reg", max_steps=10**7, max_minutes=0.003, checkpoint_every=10**7)
    r, f = _run(tmp_path, spec)
    res = r.fit(f)
    assert 0 < res.steps < 10**7
    assert r.optimizers[0].param_groups[0]["lr"] < 0.05 * 0.2  # near the end of the cosine
    shutil.rmtree(tmp_path)


def test_a_run_the_minute_budget_stops_before_it_learned_is_flagged(tmp_path, caplog):
    """11 autoencoder steps in a 2.4-minute share on a slow CPU made a ControlNet that painted noise
    with no word said: a run the wall-time budget ends before its warm-up (or 100 steps) warns."""
    import time

    class Slow(Regression):
        def training_step(self, step, gen):
            time.sleep(0.03)
            return super().training_step(step, gen)

    acc = make_accelerator(mixed_precision="no", cpu=True)
    for spec, warned in ((RunSpec("slow", max_steps=10**6, max_minutes=0.004, warmup_steps=50), True),
                         (RunSpec("short", max_steps=5, warmup_steps=50), False)):  # fmt: skip
        caplog.clear()
        runner = Runner(spec, acc, tmp_path / spec.stage, fingerprint({}), progress=False)
        res = runner.fit(Slow(runner))
        assert (res.steps < 100) and (("barely trained" in caplog.text) == warned), caplog.text
        if warned:
            assert f"ended after {res.steps} steps" in caplog.text


def test_on_start_hook_and_tensorboard_writer_for_the_family(tmp_path):
    """``on_start`` runs once per fit, after resume and the probe; ``runner.tb`` takes the family's own scalars."""
    spec = RunSpec("reg", max_steps=4, checkpoint_every=2, target_minutes=0.001)
    r, f = _run(tmp_path, spec)
    calls = []

    def on_start(step):
        calls.append((step, r.max_steps, f.seen[:]))
        r.tb.add_scalar("val/extra", 1.0, step)

    f.on_start = on_start
    r.fit(f)
    assert calls == [(0, r.max_steps, [])]  # the probe's steps were undone before it
    assert r.tb.log_dir == str(tmp_path / "tb" / "reg")
    r2, f2 = _run(tmp_path, RunSpec("reg", max_steps=6, checkpoint_every=2))
    f2.on_start = lambda step: calls.append((step, r2.max_steps, None))
    r2.fit(f2)
    assert calls[1:] == [(r.max_steps, 6, None)]


def test_a_changed_architecture_is_refused_not_taken_for_a_damaged_checkpoint(tmp_path):
    """Another model shape cannot even load the checkpoint: still the one refusal, not a silent start over."""
    spec = RunSpec("reg", max_steps=3, checkpoint_every=3)
    r, f = _run(tmp_path, spec)
    r.fit(f)
    r2 = Runner(spec, make_accelerator(mixed_precision="no", cpu=True), tmp_path,
                fingerprint({"lr": 0.05, "width": 2}), progress=False)  # fmt: skip
    net = torch.nn.Linear(4, 2)
    r2.prepare(net, torch.optim.AdamW(net.parameters()))

    class Wide:
        def training_step(self, step, gen):
            return net(torch.randn(2, 4, generator=gen)).square().mean()

    with pytest.raises(UserError, match=r"different width \(None vs 2\).*--restart"):
        r2.fit(Wide())
    assert [p.name for p in r.checkpoints()] == ["step-00000003"]
