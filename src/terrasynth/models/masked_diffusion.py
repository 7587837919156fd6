"""Masked (absorbing-state) discrete diffusion directly on the label grid.

The forward process is D3PM's absorbing state (Austin et al. 2021, "Structured Denoising Diffusion
Models in Discrete State-Spaces", sec. 3.1) in continuous time as in MDLM (Sahoo et al. 2024): at
time t in [0, 1] each pixel of a map x0 is independently replaced by MASK (index K) with
probability m(t) = sin(pi t / 2), MaskGIT's cosine mask schedule (Chang et al. 2022). The network
sees the partly masked one-hot map (K + 1 channels) and the (B, K) class composition, and predicts
x0's class logits at every pixel; the loss is cross-entropy at the masked pixels (MaskGIT's).

Sampling is the reverse process of the absorbing-state chain (ancestral, MDLM eq. 7): from t to
s < t each still-masked pixel is revealed with probability (m(t) - m(s)) / m(t), with a class drawn
from the predicted distribution; revealed pixels never change. Nothing passes through an
autoencoder, so one- and two-pixel patches survive. The "matched" sampler also rescales each
step's class probabilities (a few Sinkhorn iterations) so that the expected composition of the
finished map equals the requested one: composition control that holds for rare classes.
``reveal="confident"`` keeps the number revealed per step but chooses *which* masked pixels to
reveal as MaskGIT does (Chang et al. 2022, sec. 3.2): those whose drawn class is most probable,
ranked with Gumbel noise of scale ``reveal_noise * t`` (annealed to 0). Random reveal draws
neighbours independently in the same step, which scatters single pixels of rare classes; revealing
confident pixels first lets later steps condition on them.

Inputs are folded by ``patch`` (lossless space-to-depth: (B, K+1, H, W) -> (B, (K+1) p^2, H/p, W/p))
so the UNet works at H/p; its output is unfolded back to per-pixel logits.
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from terrasynth.classes import IGNORE_INDEX, ClassScheme
from terrasynth.errors import UserError
from terrasynth.io import write_json_atomic
from terrasynth.models.composition import CompositionPrior
from terrasynth.models.latent_diffusion import build_denoiser, denoise

Sampler = Literal["ancestral", "matched"]
SAMPLERS: tuple[str, ...] = ("ancestral", "matched")
Reveal = Literal["random", "confident"]
MODEL_FILE = "landcover_mdm.json"


def mask_rate(t: torch.Tensor) -> torch.Tensor:
    """m(t) = sin(pi t / 2): the probability that a pixel is masked at time t in [0, 1]."""
    return torch.sin(t * math.pi / 2)


def build_label_denoiser(num_classes: int, size: int, *, patch: int = 2, **unet_kw) -> UNet2DConditionModel:
    """A composition-conditioned UNet from (B, (K+1) p^2, H/p, W/p) folded one-hot maps to K p^2 logit planes."""
    c = num_classes * patch * patch
    return build_denoiser(c + patch * patch, size // patch, out_channels=c, composition_classes=num_classes, **unet_kw)


def label_logits(unet: UNet2DConditionModel, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
                 ) -> torch.Tensor:  # fmt: skip
    """Class logits (B, K, H, W) for partly masked maps ``x`` (B, H, W) (K = MASK) at times ``t`` (B,) in [0, 1]."""
    k = unet.config.projection_class_embeddings_input_dim
    p = math.isqrt(unet.config.in_channels // (k + 1))
    h = F.pixel_unshuffle(F.one_hot(x, k + 1).permute(0, 3, 1, 2).float(), p)
    return F.pixel_shuffle(denoise(unet, h, t * 1000, cond), p)


def masked_losses(unet: UNet2DConditionModel, x0: torch.Tensor, cond: torch.Tensor | None = None, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Cross-entropy at the masked pixels of maps ``x0`` (B, H, W) of indices (IGNORE_INDEX = nodata).

    Nodata pixels are shown as MASK and never scored.
    """
    k = unet.config.projection_class_embeddings_input_dim
    b = x0.shape[0]
    t = torch.rand(b, generator=generator).to(x0.device)
    masked = torch.rand(x0.shape, generator=generator).to(x0.device) < mask_rate(t).view(b, 1, 1)
    valid = x0 != IGNORE_INDEX
    xt = torch.where(masked | ~valid, k, x0)
    target = torch.where(masked & valid, x0, IGNORE_INDEX)
    return F.cross_entropy(label_logits(unet, xt, t, cond), target, ignore_index=IGNORE_INDEX)


def match_composition(p: torch.Tensor, x: torch.Tensor, target: torch.Tensor, iters: int = 5) -> torch.Tensor:
    """Rescale class probabilities ``p`` (B, K, H, W) of the masked pixels of ``x`` (B, H, W) per class
    (Sinkhorn scaling) so that revealed pixels plus the masked pixels' expectation have shares ``target`` (B, K)."""
    k = p.shape[1]
    masked = (x == k).unsqueeze(1).float()
    have = F.one_hot(x.clamp(max=k - 1), k).permute(0, 3, 1, 2).float().mul(1 - masked).sum((2, 3))
    need = (target * x[0].numel() - have).clamp_min(0)
    need = need / need.sum(1, keepdim=True).clamp_min(1e-8) * masked.sum((1, 2, 3)).unsqueeze(1)
    w = torch.ones_like(target)
    for _ in range(iters):
        q = p * w[..., None, None]
        q = q / q.sum(1, keepdim=True).clamp_min(1e-12)
        w = (w * (need + 1e-6) / ((q * masked).sum((2, 3)) + 1e-6)).clamp(1e-4, 1e4)
    q = p * w[..., None, None]
    return q / q.sum(1, keepdim=True).clamp_min(1e-12)


class LandcoverMDM(CompositionPrior):
    """Masked discrete diffusion on the label grid: a land-cover map generator (always composition-conditioned).

    ``generate`` returns (B, H, W) training indices of ``scheme``; see the module docstring.
    """

    family = "landcover-mdm"
    conditional = True

    def __init__(
        self, unet: UNet2DConditionModel, scheme: ClassScheme, *, class_frequencies: list[float] | None = None,
        default_sampler: str = "matched", default_steps: int = 24, default_guidance: float = 1.0,
        train_compositions: torch.Tensor | None = None, temperature: float = 1.0, reveal: Reveal = "random",
        reveal_noise: float = 1.0,
    ):  # fmt: skip
        self.unet, self.temperature = unet, temperature  # < 1 sharpens each step's class probabilities
        self.reveal, self.reveal_noise = reveal, reveal_noise
        self.default_sampler, self.default_steps, self.default_guidance = default_sampler, default_steps, default_guidance  # fmt: skip
        self._init_prior(scheme, class_frequencies, train_compositions)

    @property
    def tile_size(self) -> int:
        c = self.unet.config
        return c.sample_size * math.isqrt(c.in_channels // (self.scheme.num_classes + 1))

    def check_sampler(self, name: str) -> None:
        if name not in SAMPLERS:
            raise UserError(f"sampler {name!r} is not one of the masked-diffusion samplers {list(SAMPLERS)}")

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator, *, composition: torch.Tensor | None = None,
        guidance: float | None = None, sampler: str | None = None, steps: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """``n`` maps (n, H, W) int64 training indices; ``composition`` (K,) fractions or None (drawn)."""
        sampler = sampler or self.default_sampler
        self.check_sampler(sampler)
        cond, g = self.conditions(n, composition, generator, guidance, self.default_guidance)
        k, size, dev = self.scheme.num_classes, self.tile_size, next(self.unet.parameters()).device
        cond = (cond if cond is not None else torch.zeros(n, k)).to(dev)
        x = torch.full((n, size, size), k, dtype=torch.long, device=dev)
        ts = torch.linspace(1.0, 0.0, (steps or self.default_steps) + 1)
        for t, s in pairwise(ts):
            tt = t.expand(n).to(dev)
            if g == 1.0:
                logits = label_logits(self.unet, x, tt, cond)
            else:  # classifier-free guidance on the logits, conditional and null condition as one batch
                c, u = label_logits(self.unet, x.repeat(2, 1, 1), tt.repeat(2), torch.cat([cond, 0 * cond])).chunk(2)
                logits = u + g * (c - u)
            p = (logits / self.temperature).softmax(1)
            if sampler == "matched":
                p = match_composition(p, x, cond)
            u = torch.rand((n, 1, size, size), generator=generator).to(dev)
            draw = (p.cumsum(1) < u).sum(1).clamp(max=k - 1)  # inverse-CDF draw per pixel
            masked = x == k
            if self.reveal == "confident":  # the same count as the chain reveals on average, most confident first
                conf = p.gather(1, draw.unsqueeze(1)).squeeze(1).clamp_min(1e-12).log()
                gumbel = -torch.log(-torch.log(torch.rand((n, size, size), generator=generator).clamp(1e-12, 1 - 1e-7)))
                conf = (conf + self.reveal_noise * float(t) * gumbel.to(dev)).masked_fill(~masked, -math.inf)
                count = masked.sum((1, 2)) - torch.floor(mask_rate(s) * size * size).long().to(dev)
                rank = conf.flatten(1).argsort(1, descending=True).argsort(1).view(n, size, size)
                reveal = rank < count.view(n, 1, 1)
            else:
                reveal = torch.rand((n, size, size), generator=generator).to(dev) < 1 - mask_rate(s) / mask_rate(t)
            x = torch.where(masked & reveal, draw, x)
        return x

    def eval(self) -> LandcoverMDM:
        self.unet.eval()
        return self

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.unet.save_pretrained(path / "unet")
        self.save_compositions(path)
        write_json_atomic(
            path / MODEL_FILE,
            {"scheme": self.scheme.to_dict(), "class_frequencies": self.class_frequencies,
             "default_sampler": self.default_sampler, "default_steps": self.default_steps,
             "default_guidance": self.default_guidance, "temperature": self.temperature, "reveal": self.reveal,
             "reveal_noise": self.reveal_noise},
        )  # fmt: skip

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> LandcoverMDM:
        path = Path(path)
        meta = json.loads((path / MODEL_FILE).read_text())
        return cls(
            UNet2DConditionModel.from_pretrained(path / "unet").to(device),
            ClassScheme.from_dict(meta["scheme"], where=str(path / MODEL_FILE)),
            **{k: meta[k] for k in ("class_frequencies", "default_sampler", "default_steps", "default_guidance")},
            train_compositions=cls.load_compositions(path),
            temperature=meta.get("temperature", 1.0),
            reveal=meta.get("reveal", "random"),
            reveal_noise=meta.get("reveal_noise", 1.0),
        ).eval()
