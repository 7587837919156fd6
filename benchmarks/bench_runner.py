"""The training runner's overhead: steps/s of a bare PyTorch loop vs the same steps through ``Runner``.

Baseline (measured in the same run): a hand-written loop (AdamW, zero_grad/backward/step) on an
smp UNet-resnet18 with 64 px random batches. Compared: the runner with no checkpoint inside the
run (its per-step bookkeeping: LR schedule, per-step generator, stop vote, progress, TensorBoard
every ``log_every`` steps), the runner with EMA, and the runner checkpointing every 10 steps
(Accelerate ``save_state`` into a temporary folder + rename). Also the speed probe's cost when
``target_minutes`` is set. Prints JSON; docs/benchmarks.md "Training runner" quotes it.

    python benchmarks/bench_runner.py --steps 40 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from terrasynth.accel import make_accelerator
from terrasynth.models.segmentation import build_segmenter
from terrasynth.train.runner import Runner, RunSpec, step_generator


def batch(gen: torch.Generator, b: int = 8, k: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, 3, 64, 64, generator=gen), torch.randint(0, k, (b, 64, 64), generator=gen)


class Seg:
    def __init__(self, runner: Runner, ema: bool):
        torch.manual_seed(0)
        net = build_segmenter("unet", "resnet18", 3, 6)
        self.net, _ = runner.prepare(net, torch.optim.AdamW(net.parameters(), lr=1e-3))
        if ema:
            runner.track_ema(runner.unwrap(self.net).parameters())

    def training_step(self, step: int, gen: torch.Generator) -> torch.Tensor:
        x, y = batch(gen)
        return torch.nn.functional.cross_entropy(self.net(x), y)


def bare(steps: int) -> float:
    torch.manual_seed(0)
    net = build_segmenter("unet", "resnet18", 3, 6)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    t = time.perf_counter()
    for s in range(steps):
        x, y = batch(step_generator(0, "bare", s))
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t)


def through_runner(steps: int, tmp: Path, *, ema: bool = False, every: int | None = None,
                   target: float | None = None) -> tuple[float, dict | None]:  # fmt: skip
    spec = RunSpec("bench", max_steps=steps, checkpoint_every=every or 10**9, ema_decay=0.999 if ema else None,
                   target_minutes=target)  # fmt: skip
    runner = Runner(spec, make_accelerator(mixed_precision="no"), tmp, {}, progress=False)
    fam = Seg(runner, ema)
    t = time.perf_counter()
    res = runner.fit(fam)
    return res.steps / (time.perf_counter() - t), res.probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"steps": args.steps, "threads": args.threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare(3)  # warm-up: first-call allocations, kernel selection
        out["bare_steps_per_s"] = bare(args.steps)
        out["runner_steps_per_s"], _ = through_runner(args.steps, tmp / "a")
        out["runner_ema_steps_per_s"], _ = through_runner(args.steps, tmp / "b", ema=True)
        out["runner_ckpt10_steps_per_s"], _ = through_runner(args.steps, tmp / "c", every=10)
        t = time.perf_counter()
        _, probe = through_runner(10**6, tmp / "d", target=args.steps / out["bare_steps_per_s"] / 60)
        out["probe_run_seconds"], out["probe"] = time.perf_counter() - t, probe
    b = out["bare_steps_per_s"]
    for k in ("runner", "runner_ema", "runner_ckpt10"):
        out[f"{k}_vs_bare"] = round(out[f"{k}_steps_per_s"] / b, 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
