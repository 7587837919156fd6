"""DiffAugment (Zhao et al., NeurIPS 2020): differentiable augmentations applied to *both*
real and fake images before the discriminator, so D cannot memorise a small training set.

Conditional twist: the label map moves with the image (translation, cutout), so the pair
stays aligned; colour changes touch only the image. Randomness comes from an explicit
``torch.Generator`` so a training step is reproducible.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from terrasynth.classes import IGNORE_INDEX

Policy = Literal["color", "translation", "cutout"]


def _rand(shape, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(shape, generator=gen).to(device)


def diff_augment(
    images: Sequence[torch.Tensor], masks: torch.Tensor, policy: Sequence[Policy] = ("color", "translation", "cutout"),
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:  # fmt: skip
    """Augment several image batches (each (B, 3, H, W) in [-1, 1]) with the *same* random
    transform, plus their shared ``masks`` (B, H, W) (shifted/cut pixels become nodata).

    Real and fake of one step share the draw, as in the reference implementation where
    each is augmented independently but from the same distribution; sharing keeps LabelMix
    consistent.
    """
    imgs = list(images)
    b, _, h, w = imgs[0].shape
    dev = imgs[0].device
    if "color" in policy:
        bright = _rand((b, 1, 1, 1), generator, dev) - 0.5
        sat = _rand((b, 1, 1, 1), generator, dev) * 2
        con = _rand((b, 1, 1, 1), generator, dev) + 0.5
        out = []
        for x in imgs:
            x = x + bright
            mean = x.mean(1, keepdim=True)
            x = (x - mean) * sat + mean
            mean = x.mean((1, 2, 3), keepdim=True)
            out.append((x - mean) * con + mean)
        imgs = out
    if "translation" in policy:
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        tx = (torch.randint(-sh, sh + 1, (b, 1, 1), generator=generator)).to(dev)
        ty = (torch.randint(-sw, sw + 1, (b, 1, 1), generator=generator)).to(dev)
        gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        src_y, src_x = gy.unsqueeze(0) + tx, gx.unsqueeze(0) + ty
        inside = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
        src_y, src_x = src_y.clamp(0, h - 1), src_x.clamp(0, w - 1)
        bi = torch.arange(b, device=dev).view(b, 1, 1)
        imgs = [x.permute(0, 2, 3, 1)[bi, src_y, src_x].permute(0, 3, 1, 2) * inside.unsqueeze(1) for x in imgs]
        masks = torch.where(inside, masks[bi, src_y, src_x], torch.full_like(masks, IGNORE_INDEX))
    if "cutout" in policy:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=generator).to(dev)
        ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=generator).to(dev)
        gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        y0, x0 = oy - ch // 2, ox - cw // 2
        cut = (gy >= y0) & (gy < y0 + ch) & (gx >= x0) & (gx < x0 + cw)
        imgs = [x * (~cut).unsqueeze(1) for x in imgs]
        masks = torch.where(cut, torch.full_like(masks, IGNORE_INDEX), masks)
    return imgs, masks
