"""One resumable training loop for the diffusion family: Accelerate, EMA, atomic checkpoints.

Every random draw of step ``s`` (batch indices, augmentation, noise, timesteps) comes from
a generator seeded by ``(seed, stage, s, rank)``, so a run resumed from a checkpoint at
step ``s`` continues exactly as the uninterrupted run would have (when not stopped by a
time budget). The learning rate follows linear warm-up then cosine decay over the
*progress*, the larger of ``step / steps`` and ``elapsed / max_minutes``, so a
time-limited run still anneals to zero.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from terrasynth.io import atomic_path, ensure_dir

MixedPrecision = Literal["no", "fp16", "bf16"]


@dataclass
class LoopSettings:
    steps: int
    lr: float
    max_minutes: float | None = None
    warmup_steps: int = 100
    ema_decay: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    seed: int = 0


def step_generator(seed: int, stage: str, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for every random draw of one training step."""
    h = hashlib.sha256(f"{seed}/{stage}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def lr_factor(step: int, progress: float, warmup: int) -> float:
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fit(
    stage: str,
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, int, torch.Generator], torch.Tensor],
    settings: LoopSettings,
    accelerator: Accelerator,
    ckpt_dir: Path,
    *,
    resume: bool = True,
    log_dir: Path | None = None,
) -> dict:
    """Train the trainable parameters of ``model`` with ``loss_fn(model, step, gen) -> scalar``.

    On return ``model`` holds the EMA weights. The checkpoint ``ckpt_dir/<stage>.pt`` is
    written atomically every ``checkpoint_every`` steps and at the end (``done=True``); a
    finished stage is not retrained on rerun. Returns ``{"steps", "elapsed_s", "loss"}``.
    """
    ensure_dir(ckpt_dir)
    ckpt = ckpt_dir / f"{stage}.pt"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    ema = EMAModel(params, decay=settings.ema_decay, use_ema_warmup=True, power=2 / 3)
    step, elapsed, last_loss = 0, 0.0, float("nan")
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema.load_state_dict(state["ema"])
        step, elapsed, last_loss = state["step"], state["elapsed"], state.get("loss", float("nan"))
        if state.get("done"):
            ema.copy_to(params)
            return {"steps": step, "elapsed_s": elapsed, "loss": last_loss, "resumed": True}
    ema.to(accelerator.device)
    wrapped, opt = accelerator.prepare(model, opt)
    budget = settings.max_minutes * 60 if settings.max_minutes else None
    writer = None
    if log_dir is not None and accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir / stage))

    def save(done: bool) -> None:
        if not accelerator.is_main_process:
            return
        state = {
            "model": accelerator.unwrap_model(wrapped).state_dict(),
            "opt": opt.state_dict(),
            "ema": ema.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "loss": last_loss,
            "done": done,
        }
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)

    t0 = time.monotonic() - elapsed
    bar = tqdm(total=settings.steps, initial=step, desc=stage, unit="step", disable=not accelerator.is_main_process)
    wrapped.train()
    while step < settings.steps:
        elapsed = time.monotonic() - t0
        if budget is not None and elapsed >= budget:
            break
        progress = max(step / settings.steps, elapsed / budget if budget else 0.0)
        for g in opt.param_groups:
            g["lr"] = settings.lr * lr_factor(step, progress, settings.warmup_steps)
        gen = step_generator(settings.seed, stage, step, accelerator.process_index)
        with accelerator.autocast():
            loss = loss_fn(wrapped, step, gen)
        accelerator.backward(loss)
        if settings.grad_clip:
            accelerator.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(params)
        step += 1
        last_loss = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if writer is not None:
            writer.add_scalar("loss", last_loss, step)
            writer.add_scalar("lr", opt.param_groups[0]["lr"], step)
        if step % settings.checkpoint_every == 0:
            elapsed = time.monotonic() - t0
            save(False)
    bar.close()
    elapsed = time.monotonic() - t0
    save(True)
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    ema.copy_to(params)
    return {"steps": step, "elapsed_s": elapsed, "loss": last_loss, "resumed": False}
