"""Training the ControlNet generator: a latent-diffusion base (autoencoder + unconditional
UNet) and a ControlNet on top of it.

``train_controlnet_base`` writes a base-model directory (see
:mod:`terrasynth.models.latent_base`); ``train_controlnet`` trains a ControlNet on any
base (that directory or a local Stable-Diffusion checkpoint) and writes a generator run
that ``terrasynth synthesize --generator RUN`` loads. Every stage ("vae", "unet",
"controlnet") trains through :class:`terrasynth.train.runner.Runner` (budgets, LR schedule,
EMA, checkpoints, resume); this module supplies the models and each stage's loss. The EMA
weights are what is saved. ``accelerate launch -m terrasynth controlnet ...`` for several GPUs.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from terrasynth.accel import make_accelerator, resolve_precision
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler
from pydantic import Field
from torch.utils.data import ConcatDataset

from terrasynth.classes import one_hot
from terrasynth.config import MixedPrecision, Seed, StrictModel, TrainBudget, config_dict, config_hash, save_resolved
from terrasynth.data.dataset import provenance
from terrasynth.data.torchdata import TileDataset, random_pairs
from terrasynth.errors import UserError
from terrasynth.inference.previews import training_preview
from terrasynth.io import ensure_dir, write_json_atomic
from terrasynth.models.autoencoder import AutoencoderArch, VAELoss, downsampling_factor
from terrasynth.models.controlnet import (
    CONTROLNET_DIR, ControlNetGenerator, Unconditional, build_controlnet, controlled_unet,
)  # fmt: skip
from terrasynth.models.generator import write_generator_file
from terrasynth.models.diffusion import LatentNorm, SamplingConfig, diffusion_target, training_scheduler
from terrasynth.models.latent_base import (
    ContextUNet, build_latent_unet, is_pretrained_base, is_trained_base, load_base, save_trained_base,
)  # fmt: skip
from terrasynth.train.runner import Runner, RunSpec, ema_copy, fingerprint, seed_everything

# ---- configs --------------------------------------------------------------------------


class AutoencoderConfig(AutoencoderArch):
    """The image KL autoencoder. ``len(block_out_channels) - 1`` halvings: three entries give f=4."""

    block_out_channels: list[int] = [64, 128, 128]
    norm_num_groups: int | None = Field(None, ge=1)
    mid_attention: bool = True
    pretrained: str | None = None  # a local diffusers AutoencoderKL directory to use instead
    kl_weight: float = Field(1e-6, ge=0)
    max_steps: int = Field(3000, ge=0)  # 0 with ``pretrained`` or ``init_from``: keep it frozen
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    adversarial: float = Field(
        0.0, ge=0, description="weight of a PatchGAN hinge loss on the reconstructions against L1's blur (the "
        "VQGAN / Stable Diffusion autoencoder recipe, without its perceptual term); 0 = off",
    )  # fmt: skip
    adversarial_start: int = Field(0, ge=0, description="step at which the discriminator joins (L1 + KL before)")
    disc_channels: int = Field(32, ge=1, description="width of the discriminator's first layer")


class LatentUNetConfig(StrictModel):
    """The base denoiser, a diffusers UNet2DConditionModel on latents with a learned constant context."""

    block_out_channels: list[int] = [64, 128, 192]
    cross_attention: list[bool] = [False, True, True]  # per level; keep attention at <= 8x8 on CPU
    layers_per_block: int = 2
    attention_head_dim: int = 8
    cross_attention_dim: int = 64
    context_tokens: int = 4
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    max_steps: int = Field(6000, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)


class ControlNetBaseConfig(StrictModel):
    seed: Seed = 0
    splits: list[str] = ["train", "val"]  # imagery to learn from; labels are not used
    augment: bool = True
    # Budgets for both stages together (the steps are per stage: vae.max_steps, unet.max_steps).
    max_minutes: float | None = Field(None, gt=0, description="wall-time cap of both stages")
    target_minutes: float | None = Field(None, gt=0, description="size both stages' steps to fit this")
    vae_share: float = Field(0.4, gt=0, lt=1)  # of the minutes for the autoencoder; the UNet gets the rest
    warmup_steps: int = Field(100, ge=0)
    vae: AutoencoderConfig = AutoencoderConfig()
    unet: LatentUNetConfig = LatentUNetConfig()
    ema_decay: float = 0.999
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False


class ControlNetSamplingConfig(SamplingConfig):
    steps: int = Field(20, ge=1)
    conditioning_scale: float = 1.0
    batch_size: int = Field(64, ge=1)


class ControlNetConfig(TrainBudget):
    seed: Seed = 0
    splits: list[str] = ["train"]
    augment: bool = True
    prompt: str = "aerial photograph"  # context for Stable-Diffusion-layout bases
    conditioning_embedding_out_channels: list[int] | None = None  # None: by the base's factor
    unconditional: Unconditional = "base"
    condition_dropout: float = Field(0.0, ge=0, lt=1)  # use ~0.1 with unconditional=zero_condition
    max_steps: int = Field(4000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    ema_decay: float = 0.999
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    sampling: ControlNetSamplingConfig = ControlNetSamplingConfig()


class ControlNetRunConfig(StrictModel):
    """Both stages in one file (``configs/controlnet-*.yaml``): ``base:`` and ``controlnet:``."""

    base: ControlNetBaseConfig = ControlNetBaseConfig()
    controlnet: ControlNetConfig = ControlNetConfig()


# ---- helpers --------------------------------------------------------------------------


def open_tiles(data: Path | Sequence[Path], splits: list[str], *, labels: bool = True) -> ConcatDataset:
    """The image/mask tiles of ``splits`` of one or more paired datasets of one tile size, cached in memory
    (``labels=False``: the images alone; no label file is opened)."""
    paths = _paths(data)
    sets = [TileDataset(p, splits, cache=True, labels=labels) for p in paths]
    sizes = {s.ds.info.tile_size for s in sets}
    if len(sizes) > 1:
        raise UserError(f"datasets {[str(p) for p in paths]} have different tile sizes {sorted(sizes)}; use one size")
    return ConcatDataset(sets)


def batch(tiles: ConcatDataset, n: int, gen: torch.Generator, augment: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` random items: images (n, 3, H, W), masks (n, H, W) (None for tiles opened without labels)."""
    return random_pairs(lambda i: (tiles[i]["image"], tiles[i].get("mask")), len(tiles), n, gen, augment)


def noisy(sched: DDPMScheduler, latents: torch.Tensor, gen: torch.Generator):
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(latents.device)
    return sched.add_noise(latents, noise, t), t, diffusion_target(sched, latents, noise, t)


def _prepare_out(cfg: StrictModel, out: Path, source: str, data: object) -> None:
    ensure_dir(out)
    save_resolved(cfg, out)
    prov = provenance(source, config_hash=config_hash(cfg), seed=cfg.seed, data=[str(p) for p in _paths(data)])
    write_json_atomic(out / "provenance.json", prov)


def _paths(data: object) -> list[Path]:
    return [Path(data)] if isinstance(data, (str, Path)) else [Path(p) for p in data]  # type: ignore[union-attr]


@torch.no_grad()
def latent_stats(vae: AutoencoderKL, tiles: ConcatDataset, n: int = 512, bs: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) of posterior samples over up to ``n`` tiles."""
    step = max(1, len(tiles) // n)
    idx = list(range(0, len(tiles), step))[:n]
    zs = []
    for i in range(0, len(idx), bs):
        x = torch.stack([tiles[j]["image"] for j in idx[i : i + bs]]).to(vae.device)
        post = vae.encode(x * 2 - 1).latent_dist
        # Samples, not means: training encodes samples, and their spread is what the UNet sees.
        zs.append(post.sample(generator=torch.Generator(device=x.device).manual_seed(i)).cpu())
    z = torch.cat(zs).transpose(0, 1).flatten(1)
    return z.mean(1), z.std(1).clamp_min(1e-4)


def _accelerator(mixed_precision: str) -> Accelerator:
    # One per stage: Accelerate checkpoints every model prepared on it.
    return make_accelerator(mixed_precision=resolve_precision(mixed_precision), cpu=not torch.cuda.is_available())


class _LossStep:
    """A runner family whose step is one loss ``loss(model, step, gen)`` of the prepared ``model``."""

    def __init__(self, acc: Accelerator, model: torch.nn.Module, loss: Callable[..., torch.Tensor]):
        self.acc, self.model, self.loss = acc, model, loss

    def training_step(self, step: int, gen: torch.Generator) -> torch.Tensor:
        with self.acc.autocast():
            return self.loss(self.model, step, gen)


def _fit(
    spec: RunSpec, out: Path, fp: dict[str, Any], model: torch.nn.Module, lr: float,
    loss: Callable[..., torch.Tensor], mixed_precision: str, resume: bool,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the trainable parameters of ``model`` (AdamW) through the runner; returns (EMA copy, summary)."""
    acc = _accelerator(mixed_precision)
    runner = Runner(spec, acc, out, fp, resume=resume)
    params = [p for p in model.parameters() if p.requires_grad]
    wrapped, _ = runner.prepare(model, torch.optim.AdamW(params, lr=lr, weight_decay=0.0))
    runner.track_ema(p for p in runner.unwrap(wrapped).parameters() if p.requires_grad)
    result = runner.fit(_LossStep(acc, wrapped, loss))
    return ema_copy(runner, wrapped), {k: v for k, v in asdict(result).items() if k != "losses"}


class _AdversarialVAE:
    """The image autoencoder against a PatchGAN (``vae.adversarial`` > 0), a runner family of two
    optimisers: each step updates the discriminator on (real, reconstruction), then the autoencoder
    on L1 + KL + ``adversarial`` * lambda * hinge, where lambda = |grad L1| / |grad hinge| at the
    decoder's output convolution (VQGAN's adaptive weight), so the GAN term neither vanishes nor
    drowns the reconstruction whatever the discriminator's scale."""

    def __init__(self, runner: Runner, loss: VAELoss, cfg: AutoencoderConfig, sample: Callable[[torch.Generator], torch.Tensor]):
        from terrasynth.models.discriminators import PatchGAN

        self.runner, self.acc, self.cfg, self.sample = runner, runner.acc, cfg, sample
        d = PatchGAN(3, ndf=cfg.disc_channels, n_layers=3)
        opt_g = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        self.loss, self.d, self.opt_g, self.opt_d = runner.prepare(loss, d, opt_g, opt_d)
        runner.track_ema(p for p in runner.unwrap(self.loss).parameters() if p.requires_grad)
        self._can_freeze = self.acc.num_processes == 1  # DDP needs every parameter in every backward

    def training_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        from terrasynth.train.gan_losses import hinge_d_loss, hinge_g_loss

        loss_mod = self.runner.unwrap(self.loss)
        with self.acc.autocast():
            x, rec, kl = self.loss(self.sample(gen), gen, parts=True)
            l1 = F.l1_loss(rec, x)
            total = l1 + loss_mod.kl_weight * kl
        logs = {"l1": float(l1.detach())}
        if step >= self.cfg.adversarial_start:
            if self._can_freeze:
                self.d.requires_grad_(True)
            with self.acc.autocast():
                d_loss = hinge_d_loss(self.d(x)[-1], self.d(rec.detach())[-1])
            self.opt_d.zero_grad(set_to_none=True)
            self.runner.backward(d_loss)
            self.opt_d.step()
            if self._can_freeze:
                self.d.requires_grad_(False)
            with self.acc.autocast():
                g_adv = hinge_g_loss(self.d(rec)[-1])
            last = loss_mod.vae.decoder.conv_out.weight
            g_rec = torch.autograd.grad(l1, last, retain_graph=True)[0]
            g_gan = torch.autograd.grad(g_adv, last, retain_graph=True)[0]
            lam = (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4).detach()
            total = total + self.cfg.adversarial * lam * g_adv
            logs.update(d_loss=float(d_loss.detach()), g_adv=float(g_adv.detach()), adv_weight=float(lam))
        self.opt_g.zero_grad(set_to_none=True)
        self.runner.backward(total)
        self.acc.clip_grad_norm_([p for g in self.opt_g.param_groups for p in g["params"]], 1.0)
        self.opt_g.step()
        logs["loss"] = float(total.detach())
        return logs


def _fit_vae(spec: RunSpec, out: Path, fp: dict[str, Any], loss: VAELoss, cfg: AutoencoderConfig,
             sample: Callable[[torch.Generator], torch.Tensor], mixed_precision: str,
             resume: bool) -> tuple[torch.nn.Module, dict[str, Any]]:  # fmt: skip
    """The image autoencoder's stage: L1 + KL alone (``_fit``), or against a discriminator."""
    if not cfg.adversarial:
        return _fit(spec, out, fp, loss, cfg.lr, lambda m, step, gen: m(sample(gen), gen), mixed_precision, resume)
    acc = _accelerator(mixed_precision)
    runner = Runner(spec, acc, out, fp, resume=resume)
    family = _AdversarialVAE(runner, loss, cfg, sample)
    result = runner.fit(family)
    return ema_copy(runner, family.loss), {k: v for k, v in asdict(result).items() if k != "losses"}


def _inputs(data: object, init_from: Path | None = None) -> dict[str, Any]:
    """What a run was trained on, for its fingerprint (a changed input refuses the resume)."""
    prev = str(Path(init_from).resolve()) if init_from else None
    return {"data": [str(p.resolve()) for p in _paths(data)], "init_from": prev}


def stage_minutes(cfg: ControlNetBaseConfig, stage: str, vae_used: float = 0.0) -> dict[str, float | None]:
    """``max_minutes``/``target_minutes`` of one base stage: the autoencoder gets ``vae_share`` of them,
    the UNet what the autoencoder left (``vae_used`` minutes of training, kept in its checkpoints), >= 5%."""
    out: dict[str, float | None] = {}
    for key in ("max_minutes", "target_minutes"):
        total = getattr(cfg, key)
        if total is not None:
            total = total * cfg.vae_share if stage == "vae" else max(total - vae_used, 0.05 * total)
        out[key] = total
    return out


def _spec(stage: str, cfg: ControlNetBaseConfig | ControlNetConfig, max_steps: int, **budget: float | None) -> RunSpec:
    return RunSpec(stage, max_steps=max_steps, warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay,
                   grad_clip=1.0, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, **budget)  # fmt: skip


# ---- base -----------------------------------------------------------------------------


def train_controlnet_base(cfg: ControlNetBaseConfig, data: Path | Sequence[Path], out: Path, *,
                          init_from: Path | None = None, resume: bool = True) -> Path:  # fmt: skip
    """Train the autoencoder, then the unconditional latent UNet, on all imagery of ``data``.

    ``init_from``: a previous base run whose autoencoder, UNet and context are the start
    (fine-tuning to a new region). Returns ``out``, a base directory for ``train_controlnet``.
    """
    out = Path(out)
    seed_everything(cfg.seed)
    # Unconditional: images alone (a scarce run's unlabelled images stay unlabelled: no label is read).
    tiles = open_tiles(data, cfg.splits, labels=False)
    size = tiles.datasets[0].ds.info.tile_size
    if init_from is not None and not (is_trained_base(Path(init_from)) or is_pretrained_base(Path(init_from))):
        load_base(init_from)  # raises the one-line error now, not after the autoencoder has trained
    _prepare_out(cfg, out, "controlnet-base", data)
    acc = _accelerator(cfg.mixed_precision)
    device = acc.device
    inputs = _inputs(data, init_from)
    conf = config_dict(cfg)
    summary: dict = {}

    # Stage 1: autoencoder, with vae_share of the minutes.
    if init_from is not None:
        vae = AutoencoderKL.from_pretrained(Path(init_from) / "vae")
    elif cfg.vae.pretrained:
        if not Path(cfg.vae.pretrained).is_dir():
            raise UserError(f"vae.pretrained={cfg.vae.pretrained!r}: directory not found; pass a local AutoencoderKL")
        vae = AutoencoderKL.from_pretrained(cfg.vae.pretrained)
    else:
        vae = cfg.vae.build(3)
    factor = downsampling_factor(vae)
    if size % factor:
        raise UserError(f"{_paths(data)[0]}: tile size {size} is not a multiple of the autoencoder factor {factor}")
    if cfg.vae.max_steps > 0:
        vae.train()
        if cfg.gradient_checkpointing:
            vae.enable_gradient_checkpointing()

        def sample(gen: torch.Generator) -> torch.Tensor:
            return batch(tiles, cfg.vae.batch_size, gen, cfg.augment)[0].to(device)

        spec = _spec("vae", cfg, cfg.vae.max_steps, **stage_minutes(cfg, "vae"))
        fp = fingerprint({k: v for k, v in conf.items() if k != "unet"}, **inputs)
        ema, summary["vae"] = _fit_vae(spec, out, fp, VAELoss(vae, cfg.vae.kl_weight), cfg.vae, sample,
                                       cfg.mixed_precision, resume)  # fmt: skip
        vae = ema.vae
    vae = vae.to(device).eval().requires_grad_(False)
    prev = load_base(init_from) if init_from is not None else None
    if prev is not None and cfg.vae.max_steps == 0:
        # Same autoencoder: keep the latent normalisation the UNet was trained with.
        mean, std = prev.norm.shift, 1 / prev.norm.scale
    else:
        mean, std = latent_stats(vae, tiles)
    norm = LatentNorm(mean.to(device), scale=(1 / std).to(device))

    # Stage 2: unconditional latent UNet with a learned constant context.
    if prev is not None:
        unet, context, sched = prev.unet, prev.context, prev.noise_scheduler
        unet.requires_grad_(True)
    else:
        u = cfg.unet
        unet = build_latent_unet(
            vae.config.latent_channels, size // factor, block_out_channels=tuple(u.block_out_channels),
            cross_attention=tuple(u.cross_attention), layers_per_block=u.layers_per_block,
            cross_attention_dim=u.cross_attention_dim, attention_head_dim=u.attention_head_dim,
        )  # fmt: skip
        context = torch.randn(1, u.context_tokens, u.cross_attention_dim) * 0.02
        sched = training_scheduler(u.prediction_type, u.num_train_timesteps, u.beta_schedule)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    model = ContextUNet(unet.train(), context)

    def unet_loss(m: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        imgs, _ = batch(tiles, cfg.unet.batch_size, gen, cfg.augment)
        with torch.no_grad():
            z = vae.encode(imgs.to(device) * 2 - 1).latent_dist
            z = z.mean + z.std * torch.randn(z.mean.shape, generator=gen).to(device)
            z = norm.normalize(z)
        x, t, target = noisy(sched, z, gen)
        return F.mse_loss(m(x, t).float(), target.float())

    if cfg.unet.max_steps > 0:
        used = summary["vae"]["elapsed_s"] / 60 if "vae" in summary else 0.0
        spec = _spec("unet", cfg, cfg.unet.max_steps, **stage_minutes(cfg, "unet", used))
        model, summary["unet"] = _fit(spec, out, fingerprint(conf, **inputs), model, cfg.unet.lr, unet_loss,
                                      cfg.mixed_precision, resume)  # fmt: skip
    if acc.is_main_process:
        save_trained_base(out, vae, model.unet.eval(), sched, model.context.detach(), mean, std)
        write_json_atomic(out / "train_summary.json", summary)
        if cfg.target_minutes:  # the steps the probe chose: rerunning the resolved config trains the same model
            sized = {k: getattr(cfg, k).model_copy(update={"max_steps": summary[k]["max_steps"]}) for k in summary}
            save_resolved(cfg.model_copy(update={"target_minutes": None, **sized}), out)
    acc.wait_for_everyone()
    return out


# ---- ControlNet -----------------------------------------------------------------------


def train_controlnet(cfg: ControlNetConfig, data: Path, base: Path | str, out: Path, *,
                     init_from: Path | None = None, resume: bool = True) -> Path:  # fmt: skip
    """Train a ControlNet (base frozen) on the image/mask pairs of ``data``; write a generator run.

    ``base``: a train-base run or a local Stable-Diffusion-layout checkpoint.
    ``init_from``: a previous ControlNet run to continue from (fine-tuning to a new region).
    """
    out = Path(out)
    seed_everything(cfg.seed)
    tiles = open_tiles(data, cfg.splits)
    scheme = tiles.datasets[0].scheme
    k = scheme.num_classes
    acc = _accelerator(cfg.mixed_precision)
    lb = load_base(base, prompt=cfg.prompt).to(acc.device)
    size = tiles.datasets[0].ds.info.tile_size
    if size % lb.factor:
        raise UserError(f"{data}: tile size {size} is not a multiple of the base autoencoder factor {lb.factor}")
    _prepare_out(cfg, out, "controlnet", data)  # after the inputs are checked: a bad --base leaves no run dir
    if init_from is not None:
        controlnet = ControlNetModel.from_pretrained(Path(init_from) / CONTROLNET_DIR)
        if controlnet.config.conditioning_channels != k:
            raise UserError(
                f"{init_from}: ControlNet takes {controlnet.config.conditioning_channels} classes but {data} has {k}; "
                "remap the labels to the same scheme (terrasynth data remap) or train without --init-from"
            )
    else:
        controlnet = build_controlnet(lb, k, cfg.conditioning_embedding_out_channels)
    controlnet.train()
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        lb.unet.enable_gradient_checkpointing()
    unet, sched = lb.unet, lb.noise_scheduler

    def loss_fn(m: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        imgs, masks = batch(tiles, cfg.batch_size, gen, cfg.augment)
        cond = one_hot(masks, k).to(acc.device)
        if cfg.condition_dropout > 0:
            keep = (torch.rand(cond.shape[0], generator=gen) >= cfg.condition_dropout).float().to(acc.device)
            cond = cond * keep.view(-1, 1, 1, 1)
        with torch.no_grad():
            z = lb.encode(imgs.to(acc.device), generator=gen)
        x, t, target = noisy(sched, z, gen)
        pred = controlled_unet(unet, m, x, t, lb.contexts(x.shape[0]), cond)
        return F.mse_loss(pred.float(), target.float())

    budget = {"max_minutes": cfg.max_minutes, "target_minutes": cfg.target_minutes}
    conf = {key: v for key, v in config_dict(cfg).items() if key != "sampling"}  # sampling may change on a rerun
    fp = fingerprint(conf, base=str(lb.path), **_inputs(data, init_from))
    controlnet, summary = _fit(_spec("controlnet", cfg, cfg.max_steps, **budget), out, fp, controlnet, cfg.lr,
                               loss_fn, cfg.mixed_precision, resume)  # fmt: skip
    if acc.is_main_process:
        controlnet.save_pretrained(out / CONTROLNET_DIR)
        write_json_atomic(out / "train_summary.json", {"controlnet": summary})
        if cfg.target_minutes:  # the steps the probe chose (see train_controlnet_base)
            save_resolved(cfg.model_copy(update={"target_minutes": None, "max_steps": summary["max_steps"]}), out)
        write_generator_file(
            out, "controlnet",
            base=lb.path, prompt=cfg.prompt, scheme=scheme.to_dict(), unconditional=cfg.unconditional,
            sampling=cfg.sampling.model_dump(), tile_size=size,
        )  # fmt: skip
        gen = ControlNetGenerator(lb, controlnet, scheme, unconditional=cfg.unconditional, **cfg.sampling.model_dump())
        training_preview(gen, tiles, out / "preview.png", cfg.seed)
    acc.wait_for_everyone()
    return out
