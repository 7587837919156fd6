"""ControlNet generator: CLI end to end, zero-convolution identity, conditioning, save/load,
determinism, exact resume, and the local pretrained (Stable-Diffusion-layout) base path."""

from __future__ import annotations

import json

import pytest
import torch
from controlnet_fixtures import TINY_BASE, TINY_CONTROLNET, tiny_sd_checkpoint, toy_pairs
from diffusers import ControlNetModel

from conftest import ROOT, run_cli
from terrasynth.classes import load_scheme
from terrasynth.config import load_config
from terrasynth.errors import UserError
from terrasynth.models.controlnet import ControlNetGenerator, build_controlnet
from terrasynth.models.controlnet import load_generator as load_controlnet
from terrasynth.models.generator import ImageGenerator, load_generator
from terrasynth.models.diffusion import make_scheduler
from terrasynth.models.latent_base import load_base
from terrasynth.train.diffusion import ControlNetConfig, ControlNetRunConfig, train_controlnet


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy dataset, a tiny base and a tiny ControlNet, all through the CLI."""
    d = tmp_path_factory.mktemp("cn")
    toy_pairs(d / "data")
    cfg = ("--config", ROOT / "configs" / "controlnet-cpu.yaml")  # the shipped config, shrunk by --set
    tiny_base = [*TINY_BASE, "splits=[train]"]
    assert run_cli("controlnet", "train-base", "--data", d / "data", "--out", d / "base", *cfg, *_sets(tiny_base)) == 0
    assert run_cli(
        "controlnet", "train", "--data", d / "data", "--base", d / "base", "--out", d / "run", *cfg,
        *_sets(TINY_CONTROLNET),
    ) == 0  # fmt: skip
    return d


def test_cli_writes_base_and_generator_runs(trained):
    base, run = trained / "base", trained / "run"
    for f in ("base.json", "vae/config.json", "unet/config.json", "scheduler/scheduler_config.json",
              "context.safetensors", "latents.json", "config.yaml", "provenance.json"):  # fmt: skip
        assert (base / f).is_file(), f
    meta = json.loads((run / "generator.json").read_text())
    assert meta["family"] == "controlnet" and meta["base"] == str(base.resolve())
    assert (run / "controlnet" / "config.json").is_file() and (run / "preview.png").is_file()
    assert any((run / "tb").rglob("events.out.tfevents.*"))
    gen = load_generator(run)
    assert isinstance(gen, ImageGenerator)
    masks = torch.full((2, 32, 32), 2, dtype=torch.long)
    masks[1, :, 16:] = 255  # nodata is allowed in masks
    img = gen.generate(masks, torch.Generator().manual_seed(0))
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    d = gen.describe()
    assert d["family"] == "controlnet" and d["run"] == str(run.resolve()) and d["checkpoint"]


def test_same_seed_same_images_other_seed_differs(trained):
    gen = load_generator(trained / "run")
    masks = torch.randint(0, 6, (3, 32, 32))
    a = gen.generate(masks, torch.Generator().manual_seed(5))
    b = gen.generate(masks, torch.Generator().manual_seed(5))
    c = gen.generate(masks, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_fresh_controlnet_leaves_base_prediction_unchanged(trained):
    base = load_base(trained / "base")
    gen = ControlNetGenerator(base, build_controlnet(base, 6), load_scheme("dronedeploy"))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    cond = torch.nn.functional.one_hot(torch.randint(0, 6, (2, 32, 32)), 6).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        assert torch.equal(gen.predict(x, t, cond), gen.predict(x, t, None))


def test_condition_changes_output_after_training(trained, tmp_path):
    # A fresh ControlNet's zero convolutions (and the embedding's zero output conv) make every
    # mask give the same prediction; after training on the toy task the condition must matter.
    cfg = ControlNetConfig(steps=30, batch_size=4, lr=4e-3, warmup_steps=1, checkpoint_every=100, augment=False,
                           sampling={"steps": 3, "batch_size": 8})  # fmt: skip
    run = train_controlnet(cfg, trained / "data", trained / "base", tmp_path / "toy")
    gen = load_generator(run)
    fresh = ControlNetGenerator(gen.base, build_controlnet(gen.base, 6), gen.scheme, steps=3)
    veg, bld = torch.full((1, 32, 32), 2), torch.full((1, 32, 32), 0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        assert torch.equal(fresh.predict(x, t, fresh.condition(veg)), fresh.predict(x, t, fresh.condition(bld)))
        a, b = gen.predict(x, t, gen.condition(veg)), gen.predict(x, t, gen.condition(bld))
    assert (a - b).abs().mean() > 1e-2 * a.abs().mean()
    imgs = [gen.generate(m, torch.Generator().manual_seed(0)) for m in (veg, bld)]
    assert not torch.allclose(imgs[0], imgs[1], atol=1e-4)


def test_save_load_round_trip(trained, tmp_path):
    gen = load_generator(trained / "run")
    gen.controlnet.save_pretrained(tmp_path / "cn")
    loaded = ControlNetModel.from_pretrained(tmp_path / "cn")
    a, b = gen.controlnet.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = ControlNetGenerator(gen.base, loaded, gen.scheme, steps=gen.steps, batch_size=gen.batch_size)
    masks = torch.randint(0, 6, (2, 32, 32))
    x, y = (g.generate(masks, torch.Generator().manual_seed(1)) for g in (gen, again))
    assert torch.allclose(x, y, atol=1e-5)


def test_rerun_resumes_and_finished_stages_are_kept(trained):
    ckpt = trained / "run" / "checkpoints" / "controlnet.pt"
    before = ckpt.stat().st_mtime_ns
    assert run_cli(
        "controlnet", "train", "--data", trained / "data", "--base", trained / "base", "--out", trained / "run",
        *_sets(TINY_CONTROLNET),
    ) == 0  # fmt: skip
    assert ckpt.stat().st_mtime_ns == before  # done: not retrained
    assert torch.load(ckpt, weights_only=False)["step"] == 4


def test_schedulers_by_name_and_bad_inputs(trained):
    gen = load_controlnet(trained / "run", scheduler="DDIMScheduler", steps=2)
    assert gen.scheduler.config.clip_sample is False  # inherited True from DDPM would clip latents
    assert gen.generate(torch.zeros(1, 32, 32, dtype=torch.long), torch.Generator().manual_seed(0)).shape[1] == 3
    with pytest.raises(UserError, match="not a diffusers scheduler"):
        make_scheduler("NoSuchScheduler", gen.base.noise_scheduler.config)
    with pytest.raises(UserError, match="autoencoder factor is 4"):
        build_controlnet(gen.base, 6, (16, 32))
    with pytest.raises(UserError, match="not a multiple"):
        gen.generate(torch.zeros(1, 30, 30, dtype=torch.long), torch.Generator())
    with pytest.raises(UserError, match="not a base model"):
        load_base(trained / "data")


def test_init_from_continues_on_new_data(trained, tmp_path):
    toy_pairs(tmp_path / "target", n=6, seed=3)
    sets = [s for s in TINY_BASE if not s.startswith("vae.steps")] + ["vae.steps=0", "unet.steps=2"]
    assert run_cli("controlnet", "train-base", "--data", tmp_path / "target", "--out", tmp_path / "b2",
                   "--init-from", trained / "base", *_sets(sets)) == 0  # fmt: skip
    old, new = load_base(trained / "base"), load_base(tmp_path / "b2")
    assert torch.equal(old.norm.shift, new.norm.shift)  # same autoencoder, same latent normalisation
    assert run_cli("controlnet", "train", "--data", tmp_path / "target", "--base", tmp_path / "b2", "--out",
                   tmp_path / "r2", "--init-from", trained / "run", *_sets(TINY_CONTROLNET)) == 0  # fmt: skip
    a = ControlNetModel.from_pretrained(trained / "run" / "controlnet")
    b = ControlNetModel.from_pretrained(tmp_path / "r2" / "controlnet")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and any(not torch.equal(sa[k], sb[k]) for k in sa)


def test_local_pretrained_sd_layout_base(tmp_path):
    sd = tiny_sd_checkpoint(tmp_path / "sd")
    toy_pairs(tmp_path / "data", n=6)
    assert run_cli(
        "controlnet", "train", "--data", tmp_path / "data", "--base", sd, "--out", tmp_path / "run",
        "--prompt", "aerial photograph", *_sets(TINY_CONTROLNET),
    ) == 0  # fmt: skip
    gen = load_generator(tmp_path / "run")
    assert gen.base.source == "pretrained" and gen.base.factor == 8 and gen.base.context.shape == (1, 8, 16)
    img = gen.generate(torch.randint(0, 6, (2, 32, 32)), torch.Generator().manual_seed(0))
    assert img.shape == (2, 3, 32, 32)
    other = load_base(sd, prompt="a b c")
    assert not torch.allclose(other.context, gen.base.context)  # the prompt reaches the context


@pytest.mark.parametrize("name", ["controlnet-cpu.yaml", "controlnet-gpu.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(ControlNetRunConfig, ROOT / "configs" / name)
    assert len(cfg.base.vae.block_out_channels) == 3  # f = 4: the ControlNet embedding needs 3 stages
    assert len(cfg.base.unet.cross_attention) == len(cfg.base.unet.block_out_channels)


def test_unknown_config_key_is_one_line_error(tmp_path):
    toy_pairs(tmp_path / "data", n=4)
    assert run_cli("controlnet", "train-base", "--data", tmp_path / "data", "--out", tmp_path / "b",
                   "--set", "vae.nope=1") == 2  # fmt: skip
    assert not (tmp_path / "b").exists()
