"""CPU contention: land-cover diffusion training steps alone and beside one busy process.

    python benchmarks/bench_contention.py --steps 6 [--policies default,terrasynth] [--out result.json]

For each thread policy, a fresh child process times ``--steps`` training steps (forward,
backward, AdamW) of the land-cover latent UNet of ``configs/landcover-cpu.yaml`` (4 x 16 x 16
latents, batch 32, composition-conditioned) after two warm-up steps, first alone and then
beside one CPU-bound process (a Python busy loop pinned to nothing, as another user's job
would be). Policies:

- ``default``: what torch does by itself (one intra-op thread per core, OpenMP's default wait
  policy: idle threads spin);
- ``terrasynth``: :func:`terrasynth.threads.configure_threads`, what the CLI does at start-up.

Prints and writes seconds per step (median) and the contended/alone ratio per policy. A
machine with ``N`` cores shared with one busy process gives a job ``N - 1/2`` cores' worth at
best, so the fair slowdown on 2 cores is about 1.3-2x.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def busy() -> None:
    while True:
        pass


def worker(steps: int, policy: str) -> None:
    if policy == "terrasynth":
        from terrasynth.threads import configure_threads

        configure_threads()
    import torch

    from terrasynth.models.latent_diffusion import build_denoiser

    torch.manual_seed(0)
    unet = build_denoiser(4, 16, block_out_channels=(64, 128, 128), layers_per_block=2,
                          attention=(False, False, True), attention_head_dim=8, norm_num_groups=32,
                          composition_classes=11)  # fmt: skip
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-4)
    x = torch.randn(32, 4, 16, 16)
    cond = torch.rand(32, 11)
    t = torch.randint(0, 1000, (32,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        out = unet(x, t, encoder_hidden_states=torch.zeros(32, 1, 128), class_labels=cond).sample
        loss = (out - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"s_per_step": statistics.median(times), "threads": torch.get_num_threads(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))  # fmt: skip


def run(steps: int, policy: str, contended: bool) -> dict:
    hog = None
    if contended:
        hog = mp.Process(target=busy, daemon=True)
        hog.start()
    try:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS"):
            env.pop(k, None)
        p = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(steps), "--policies", policy],
                           capture_output=True, text=True, env=env, check=True)  # fmt: skip
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        if hog is not None:
            hog.terminate()
            hog.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--policies", default="default,terrasynth")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(args.steps, args.policies)
        return
    results = {"cpus": len(os.sched_getaffinity(0)), "load_average_at_start": os.getloadavg(), "policies": {}}
    for policy in args.policies.split(","):
        alone = run(args.steps, policy, contended=False)
        beside = run(args.steps, policy, contended=True)
        ratio = beside["s_per_step"] / alone["s_per_step"]
        results["policies"][policy] = {"alone": alone, "beside_one_busy": beside, "ratio": ratio}
        print(f"{policy:>10}: alone {alone['s_per_step']:.2f} s/step ({alone['threads']} threads), "
              f"beside one busy process {beside['s_per_step']:.2f} s/step: {ratio:.1f}x", flush=True)  # fmt: skip
    results["load_average_at_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
