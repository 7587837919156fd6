"""CPU training speed and peak memory of the three segmenters, with and without bf16 / channels_last.

Each (architecture, setting) runs in a fresh subprocess (so peak RSS is its own): the
model is prepared by Accelerate exactly as ``train_segmentation`` does (autocast for bf16,
AdamW foreach), a batch of random 64 px tiles is trained on for a few warm-up steps, then
``--steps`` timed steps. Ratios are against fp32 / contiguous of the same architecture,
measured in the same run. Run it under the heavy lock on a shared machine:

    flock /work/heavy.lock python benchmarks/bench_segmentation.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SETTINGS = {  # name -> (bf16, channels_last)
    "fp32": (False, False),
    "bf16": (True, False),
    "channels_last": (False, True),
    "bf16+channels_last": (True, True),
}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(arch: str, encoder: str, bf16: bool, channels_last: bool, batch: int, size: int, steps: int, threads: int) -> None:
    import torch
    from accelerate import Accelerator

    from terrasynth.models.segmentation import build_segmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    acc = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_segmenter(arch, encoder, 3, 6).to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    model, opt = acc.prepare(model, opt)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 6, (batch, size, size))
    base = rss_mib()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps / (time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"steps_per_s": rate, "peak_rss_mib": peak, "train_peak_mib": peak - base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["unet", "unetplusplus", "deeplabv3plus"])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        arch, encoder, bf16, cl = args.child
        child(arch, encoder, bf16 == "1", cl == "1", args.batch, args.size, args.steps, args.threads)
        return
    results = []
    for arch in args.archs:
        for name, (bf16, cl) in SETTINGS.items():
            cmd = [sys.executable, __file__, "--child", arch, args.encoder, str(int(bf16)), str(int(cl)),
                   "--batch", str(args.batch), "--size", str(args.size), "--steps", str(args.steps),
                   "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = {"arch": arch, "setting": name, **json.loads(out)}
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"encoder {args.encoder}, batch {args.batch}, {args.size} px, {args.steps} timed steps, {args.threads} threads")
    print("| arch | setting | steps/s | speed vs fp32 | peak RSS MiB | training memory MiB | memory vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ref = next(x for x in results if x["arch"] == r["arch"] and x["setting"] == "fp32")
        print(f"| {r['arch']} | {r['setting']} | {r['steps_per_s']:.2f} | {r['steps_per_s'] / ref['steps_per_s']:.2f}x | "
              f"{r['peak_rss_mib']:.0f} | {r['train_peak_mib']:.0f} | {r['train_peak_mib'] / ref['train_peak_mib']:.2f}x |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
