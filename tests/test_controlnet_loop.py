"""The diffusion training loop: an interrupted run resumes to exactly the uninterrupted result."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from terrasynth.train.loop import LoopSettings, fit


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _loss(fail_at=None):
    def loss(m, step, gen):
        if step == fail_at:
            raise KeyboardInterrupt
        x = torch.randn(16, 4, generator=gen)
        return (m(x).squeeze(1) - x.sum(1)).pow(2).mean()

    return loss


def test_interrupted_run_resumes_exactly(tmp_path):
    s = LoopSettings(steps=10, lr=1e-2, warmup_steps=2, checkpoint_every=3, seed=1)
    acc = Accelerator(cpu=True)
    full = _model()
    fit("x", full, _loss(), s, acc, tmp_path / "a")
    part = _model()
    with pytest.raises(KeyboardInterrupt):
        fit("x", part, _loss(fail_at=7), s, acc, tmp_path / "b")
    assert torch.load(tmp_path / "b" / "x.pt", weights_only=False)["step"] == 6
    resumed = _model()
    info = fit("x", resumed, _loss(), s, acc, tmp_path / "b")
    assert info["steps"] == 10
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(p, q, atol=1e-6)  # EMA weights of both runs


def test_time_budget_stops_early(tmp_path):
    s = LoopSettings(steps=10**6, lr=1e-2, max_minutes=0.02, seed=0)
    info = fit("y", _model(), _loss(), s, Accelerator(cpu=True), tmp_path)
    assert 0 < info["steps"] < 10**6 and info["elapsed_s"] >= 1.2
