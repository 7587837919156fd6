"""Sampling a ``terrasynth landcover train`` run: maps in memory, or a label-only synthetic dataset on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from terrasynth.config import config_hash, read_yaml
from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.errors import UserError
from terrasynth.models import latent_diffusion, masked_diffusion
from terrasynth.models.latent_diffusion import LandcoverLDM
from terrasynth.models.masked_diffusion import LandcoverMDM

LandcoverGenerator = LandcoverLDM | LandcoverMDM
# model file -> generator family (``landcover.generator`` latent / discrete)
FAMILIES = {latent_diffusion.MODEL_FILE: LandcoverLDM, masked_diffusion.MODEL_FILE: LandcoverMDM}


def load_landcover(run: Path, weights: Literal["raw", "ema"] | None = None, device: str = "cpu") -> LandcoverGenerator:
    """The trained generator of a run directory, either family (``weights`` None: the run's sampling.weights)."""
    run = Path(run)
    mdir = run / "model"
    found = [cls for name, cls in FAMILIES.items() if (mdir / name).exists()]
    if not found:
        raise UserError(f"{run}: no trained land-cover model (model/{' or model/'.join(FAMILIES)}); "
                        "run 'terrasynth landcover train' first")  # fmt: skip
    model = found[0].from_pretrained(mdir, device=device)
    if (weights or read_yaml(run / "config.yaml").get("sampling", {}).get("weights", "raw")) == "ema":
        model.unet = type(model.unet).from_pretrained(mdir / "unet_ema").to(device).eval()
    return model


def parse_composition(text: str, codes: list[int], where: str = "--composition") -> dict[int, float]:
    """``"50:0.3,80:0.2"`` -> {50: 0.3, 80: 0.2}; codes must be in the scheme, shares sum to <= 1."""
    out: dict[int, float] = {}
    try:
        for part in text.split(","):
            c, v = part.split(":")
            out[int(c)] = float(v)
    except ValueError as exc:
        raise UserError(f"{where} {text!r}: expected CODE:SHARE pairs like 50:0.3,80:0.2") from exc
    bad = sorted(set(out) - set(codes))
    if bad:
        raise UserError(f"{where} {text!r}: class codes {bad} are not in the scheme (known: {codes})")
    if any(v < 0 for v in out.values()) or sum(out.values()) > 1 + 1e-6:
        raise UserError(f"{where} {text!r}: shares must be >= 0 and sum to at most 1")
    return out


def generate_maps(
    model: LandcoverGenerator, n: int, *, seed: int = 0, batch_size: int = 64, composition: dict[int, float] | None = None,
    guidance: float | None = None, sampler: str | None = None, steps: int | None = None, skip=lambda b: False,
    on_batch=None, progress: bool = True,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """``n`` maps as (n, H, W) uint8 class codes and the seconds per map.

    Batch ``b`` is drawn from ``torch.Generator().manual_seed(seed * 1_000_003 + b)`` so any
    batch can be redone alone (``skip(b)`` True skips it, e.g. when already written).
    """
    if sampler is not None:
        model.check_sampler(sampler)  # an unknown name fails now, not after a batch
    cond = model.composition_vector(composition) if composition else None
    full, secs, made = [], 0.0, 0
    for b in tqdm(range(-(-n // batch_size)), desc="sample maps", unit="batch", disable=not progress):
        if skip(b):
            continue
        m = min(batch_size, n - b * batch_size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + b)
        t0 = time.perf_counter()
        idx = model.generate(m, g, composition=cond, guidance=guidance, sampler=sampler, steps=steps)
        secs += time.perf_counter() - t0
        made += m
        full.append(model.scheme.to_codes(idx.cpu().numpy()))
        if on_batch:
            on_batch(b, full[-1])
    return (np.concatenate(full) if full else np.zeros((0,), np.uint8)), (secs / made if made else float("nan"))


def sample_landcover(
    run: Path, n: int, out: Path, *, seed: int = 0, batch_size: int = 64, composition: dict[int, float] | None = None,
    guidance: float | None = None, sampler: str | None = None, steps: int | None = None, split: str = "train",
    overwrite: bool = False,
) -> Dataset:  # fmt: skip
    """Write ``n`` generated maps as a label-only dataset (``kind: synthetic``) at ``out``.

    Rerunning the same command resumes: finished batches are skipped.
    """
    run = Path(run)
    if n < 1:
        raise UserError(f"--n {n}: ask for at least one map")
    model = load_landcover(run)
    params = {
        "run": str(run.resolve()), "n": n, "seed": seed, "batch_size": batch_size,
        "composition": {str(k): v for k, v in (composition or {}).items()} or None,
        "guidance": guidance, "sampler": sampler or model.default_sampler, "steps": steps or model.default_steps,
        "split": split, "checkpoint": _checkpoint_id(run),
    }  # fmt: skip
    gen_info = {"family": model.family, "run": str(run.resolve()), "checkpoint": params["checkpoint"],
                "sampler": params["sampler"], "steps": params["steps"]}  # fmt: skip
    info = DatasetInfo(
        name=f"landcover-synthetic-{run.name}", kind="synthetic", scheme=model.scheme,
        tile_size=model.tile_size, gsd=_run_gsd(run), has_images=False,
        provenance=provenance(f"{model.family}:{run.resolve()}", config_hash=config_hash(params), seed=seed,
                              generator=gen_info, sampling=params),
    )  # fmt: skip
    from terrasynth import budget

    budget.check_budget(
        f"landcover sample --n {n:,}", memory=n * budget.RECORD_BYTES,
        disk=budget.tiles_disk_bytes(n, info.tile_size, images=False), out=out, fix="ask for fewer maps with --n",
    )  # fmt: skip
    with DatasetWriter(out, info, overwrite=overwrite) as w:
        ids = [f"s{seed}_{i:06d}" for i in range(n)]

        def done(b: int) -> bool:
            return all(w.has(t) for t in ids[b * batch_size : (b + 1) * batch_size])

        def write(b: int, codes: np.ndarray) -> None:
            for j, m in enumerate(codes):
                w.write(ids[b * batch_size + j], split, m, source=f"{model.family}:{run.name}")

        _, s_per_map = generate_maps(
            model, n, seed=seed, batch_size=batch_size, composition=composition, guidance=guidance,
            sampler=sampler, steps=steps, skip=done, on_batch=write,
        )  # fmt: skip
        if np.isfinite(s_per_map):
            info.extra["seconds_per_map"] = s_per_map
        return w.finalize()


def _checkpoint_id(run: Path) -> str:
    """A short content hash of the exported weights, so provenance pins the exact model."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((run / "model").rglob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _run_gsd(run: Path) -> float | None:
    return json.loads((run / "data.json").read_text()).get("gsd") if (run / "data.json").exists() else None
