"""Training speed of image-autoencoder candidates for the ControlNet base, against the presets' own.

    python benchmarks/bench_image_autoencoder.py [--threads 1] [--batch 16] [--size 64] [--rounds 2]
                                                 [--profile NAME] [--json FILE]

Issue #16: on a 2-core CPU without AVX-512 the presets' KL autoencoder (channels 64/128/128, mid
attention, batch 16) trained at about 10 s/step, so a 2.4-minute share bought 11-16 steps. Each
candidate here runs one full training step (forward, loss, backward, AdamW) on the same random
batch; rounds are interleaved so that load from other work falls on every candidate alike, and the
fastest round counts. The baseline is the presets' autoencoder measured in the same run; ``ratio``
is baseline s/step / candidate s/step (higher is faster). ``--profile NAME`` prints the top
operators of one step of that candidate (``torch.profiler``). Speed only: what each buys in quality
at equal minutes is for ``bench_controlnet.py`` on the real pairs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderTiny

from terrasynth.models.autoencoder import VAELoss
from terrasynth.train.diffusion import AutoencoderConfig

BASELINE = "kl 64/128/128 + mid attention (scarce presets)"


def kl(**arch):
    cfg = AutoencoderConfig(**arch)
    vae = cfg.build(3)
    loss = VAELoss(vae, cfg.kl_weight)
    return vae, lambda x, g: loss(x, g)


def tiny(channels: int):
    """diffusers' AutoencoderTiny (TAESD layout) at f=4: three blocks of ``channels`` (it needs equal widths)."""
    ae = AutoencoderTiny(encoder_block_out_channels=(channels,) * 3, decoder_block_out_channels=(channels,) * 3,
                         num_encoder_blocks=(1, 3, 3), num_decoder_blocks=(3, 3, 1), latent_channels=4)  # fmt: skip
    return ae, lambda x, g: torch.nn.functional.l1_loss(ae.decode(ae.encode(x).latents).sample, x)


CANDIDATES = {
    BASELINE: lambda: kl(),
    "kl 64/128/128, no attention": lambda: kl(mid_attention=False),
    "kl 32/64/128": lambda: kl(block_out_channels=[32, 64, 128], mid_attention=False),
    "kl 32/64/64 (controlnet-cpu.yaml)": lambda: kl(block_out_channels=[32, 64, 64], mid_attention=False),
    "kl 64/128 (f=2)": lambda: kl(block_out_channels=[64, 128], mid_attention=False),
    "AutoencoderTiny 64x3 (f=4)": lambda: tiny(64),
    "AutoencoderTiny 32x3 (f=4)": lambda: tiny(32),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", choices=sorted(CANDIDATES), help="print the top operators of this candidate")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.rand(a.batch, 3, a.size, a.size) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    built = {name: make() for name, make in CANDIDATES.items()}
    opts = {name: torch.optim.AdamW(m.parameters(), 1e-4) for name, (m, _) in built.items()}

    def step(name: str) -> float:
        t = time.perf_counter()
        opts[name].zero_grad()
        built[name][1](x, gen).backward()
        opts[name].step()
        return time.perf_counter() - t

    for name in built:  # warm-up: allocator, oneDNN primitive caches
        step(name)
    times: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(a.rounds):
        for name in built:
            times[name].append(step(name))
    base = min(times[BASELINE])
    rows = []
    for name, (m, _) in built.items():
        s = min(times[name])
        rows.append({"candidate": name, "s_per_step": round(s, 3), "ratio": round(base / s, 2),
                     "params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 2)})  # fmt: skip
        print(f"{name:48s} {s:7.2f} s/step  {base / s:5.2f}x  {rows[-1]['params_m']:5.2f} M params", flush=True)
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    meta = {"threads": a.threads, "batch": a.batch, "size": a.size, "rounds": a.rounds, "avx512f": "avx512f" in flags}
    print(json.dumps(meta))
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(a.profile)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "baseline": BASELINE, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
