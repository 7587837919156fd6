"""Sampling speed of the CPU preset architecture: DPM-Solver++ 20 steps against DDIM 50 steps, 32 maps of 64x64.

    python benchmarks/bench_landcover_sampling.py
"""
# Sampling-speed probe of the CPU preset's architecture (weights untrained: speed does not depend on them).
import time, torch
from terrasynth.classes import WORLDCOVER
from terrasynth.models.autoencoder import build_autoencoder
from terrasynth.models.diffusion import LatentNorm, training_scheduler
from terrasynth.models.latent_diffusion import LandcoverLDM, build_denoiser
torch.set_num_threads(2)
vae = build_autoencoder(11, block_out_channels=(32, 64, 64), norm_num_groups=16, sample_size=64).eval()
unet = build_denoiser(4, 16, block_out_channels=(64, 128, 128), attention=(False, False, True), composition_classes=11).eval()
m = LandcoverLDM(vae, unet, dict(training_scheduler().config), LatentNorm(torch.zeros(4), std=torch.ones(4)), WORLDCOVER,
                 train_compositions=torch.full((4, 11), 1 / 11))
for name, steps in [("dpmsolver++", 20), ("ddim", 50), ("dpmsolver++", 20)]:
    t = time.perf_counter(); m.generate(32, torch.Generator().manual_seed(0), sampler=name, steps=steps)
    print(name, steps, (time.perf_counter() - t) / 32, "s/map", flush=True)
