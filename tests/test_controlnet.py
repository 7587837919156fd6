"""ControlNet generator: CLI end to end, zero-convolution identity, conditioning, save/load,
determinism, exact resume, and the local pretrained (Stable-Diffusion-layout) base path."""

from __future__ import annotations

import json

import pytest
import torch
from controlnet_fixtures import TINY_BASE, TINY_CONTROLNET, tiny_sd_checkpoint
from diffusers import ControlNetModel

from conftest import ROOT, run_cli, toy_pairs
from model_contract import ModelContract
from terrasynth.classes import load_scheme
from terrasynth.config import load_config
from terrasynth.errors import UserError
from terrasynth.models.controlnet import CONTROLNET_DIR, ControlNetGenerator, build_controlnet
from terrasynth.models.controlnet import load_generator as load_controlnet
from terrasynth.models.generator import ImageGenerator, load_generator
from terrasynth.models.diffusion import make_scheduler
from terrasynth.models.latent_base import load_base
from terrasynth.train.diffusion import (
    ControlNetBaseConfig, ControlNetConfig, ControlNetRunConfig, stage_minutes, train_controlnet,
)  # fmt: skip


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


def test_synthesize_sampling_overrides_are_used_and_recorded(trained, tmp_path, monkeypatch, capsys):
    from terrasynth.data.dataset import Dataset
    from terrasynth.models import controlnet as cn_mod

    calls = []
    real_predict = cn_mod.ControlNetGenerator.predict
    monkeypatch.setattr(cn_mod.ControlNetGenerator, "predict",
                        lambda self, x, *a, **k: calls.append(len(x)) or real_predict(self, x, *a, **k))  # fmt: skip
    args = ("synthesize", "--generator", trained / "run", "--labels", trained / "data", "--split", "test",
            "--batch-size", "64")  # fmt: skip
    assert run_cli(*args, "--out", tmp_path / "fast", "--steps", "2", "--guidance", "1") == 0
    fast = Dataset.open(tmp_path / "fast")
    gen = fast.info.provenance["generator"]
    assert (gen["steps"], gen["guidance_scale"]) == (2, 1.0)
    assert len(calls) == 2, "guidance 1 = one UNet pass per sampling step"
    assert run_cli(*args, "--out", tmp_path / "saved") == 0  # the run's own settings: another config hash
    saved = Dataset.open(tmp_path / "saved").info.provenance
    assert saved["generator"]["steps"] == 3 and saved["config_hash"] != fast.info.provenance["config_hash"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(*args, "--out", tmp_path / "bad", "--steps", "0")
    assert exc.value.code == 2
    assert "--steps" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_sampling_overrides_refused_for_one_pass_generators(tmp_path):
    (tmp_path / "generator.json").write_text(json.dumps({"family": "spade"}))
    with pytest.raises(UserError, match="apply to ControlNet runs"):
        load_generator(tmp_path, steps=5)


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
    cfg = ControlNetConfig(max_steps=30, batch_size=4, lr=4e-3, warmup_steps=1, checkpoint_every=100, augment=False,
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


def _newest_write(folder):
    return max(p.stat().st_mtime_ns for p in folder.rglob("*"))


def test_rerun_resumes_and_finished_stages_are_kept(trained, capsys):
    ckpts = trained / "run" / "checkpoints" / "controlnet"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004"]  # finished: the final state only
    before = _newest_write(ckpts)
    args = ["controlnet", "train", "--data", trained / "data", "--base", trained / "base", "--out", trained / "run",
            "--config", ROOT / "configs" / "controlnet-cpu.yaml", *_sets(TINY_CONTROLNET)]  # fmt: skip
    assert run_cli(*args) == 0
    assert _newest_write(ckpts) == before  # done: not retrained
    assert json.loads((trained / "run" / "train_summary.json").read_text())["controlnet"]["steps"] == 4
    # a changed setting is refused in one line; the checkpoints are kept
    assert run_cli(*args, "--set", "lr=1e-3") == 2
    assert "different lr (0.003 vs 0.001)" in capsys.readouterr().err and _newest_write(ckpts) == before


def _interrupt_at(monkeypatch, calls):
    """Make the ``calls``-th training batch of this process raise KeyboardInterrupt (1-based)."""
    import terrasynth.train.diffusion as diffusion

    real, n = diffusion.batch, [0]

    def batch(*a, **kw):
        n[0] += 1
        if n[0] == calls:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(diffusion, "batch", batch)


def test_interrupted_stages_resume_to_the_uninterrupted_weights(trained, tmp_path, monkeypatch):
    """vae, unet and controlnet each stopped after a checkpoint and rerun: the weights of the fixture's
    uninterrupted runs (same config, same data), bit for bit on CPU."""
    cfg = ("--config", ROOT / "configs" / "controlnet-cpu.yaml")
    base_args = ["controlnet", "train-base", "--data", trained / "data", "--out", tmp_path / "base", *cfg,
                 *_sets([*TINY_BASE, "splits=[train]"])]  # fmt: skip
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)  # vae step 3: resumes from its step-2 checkpoint
        assert run_cli(*base_args) == 130
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)  # vae steps 2-3, unet steps 0-1, then unet step 2 stops
        assert run_cli(*base_args) == 130
    assert run_cli(*base_args) == 0
    a, b = load_base(trained / "base"), load_base(tmp_path / "base")
    for x, y in ((a.vae, b.vae), (a.unet, b.unet)):
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx)
    assert torch.equal(a.context, b.context)
    for x, y in ((a.norm.shift, b.norm.shift), (a.norm.std, b.norm.std), (a.norm.scale, b.norm.scale)):
        assert (x is None and y is None) or torch.equal(x, y)
    summary = json.loads((tmp_path / "base" / "train_summary.json").read_text())
    assert summary["vae"]["resumed_from"] == 4 and summary["unet"]["resumed_from"] == 2  # vae: done, kept

    cn_args = ["controlnet", "train", "--data", trained / "data", "--base", trained / "base", "--out",
               tmp_path / "run", *cfg, *_sets(TINY_CONTROLNET)]  # fmt: skip
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)
        assert run_cli(*cn_args) == 130
    assert run_cli(*cn_args) == 0
    sa = ControlNetModel.from_pretrained(trained / "run" / "controlnet").state_dict()
    sb = ControlNetModel.from_pretrained(tmp_path / "run" / "controlnet").state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # --restart clears the stage's checkpoints and trains from step 0 again
    assert run_cli(*cn_args, "--restart") == 0
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["controlnet"]["resumed_from"] is None


def test_adversarial_autoencoder_trains_a_discriminator_and_resumes_exactly(trained, tmp_path, monkeypatch):
    """vae.adversarial: a PatchGAN joins at adversarial_start, its weights and optimiser are checkpointed with
    the autoencoder's, an interrupted run resumes to the uninterrupted weights, and the autoencoder differs from
    the fixture's L1 + KL one (same data, seed and steps)."""
    sets = [*TINY_BASE, "splits=[train]", "vae.adversarial=0.5", "vae.adversarial_start=1", "vae.disc_channels=8",
            "unet.max_steps=1"]  # fmt: skip

    def args(out):
        return ["controlnet", "train-base", "--data", trained / "data", "--out", out,
                "--config", ROOT / "configs" / "controlnet-cpu.yaml", *_sets(sets)]  # fmt: skip

    assert run_cli(*args(tmp_path / "a")) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)  # vae step 3, after the step-2 checkpoint
        assert run_cli(*args(tmp_path / "b")) == 130
    (ckpt,) = (tmp_path / "b" / "checkpoints" / "vae").glob("step-*")
    assert len(list(ckpt.glob("optimizer*"))) == 2 and len(list(ckpt.glob("*model*"))) == 2  # autoencoder + D
    assert run_cli(*args(tmp_path / "b")) == 0
    a, b, plain = (load_base(p).vae.state_dict() for p in (tmp_path / "a", tmp_path / "b", trained / "base"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], plain[k]) for k in a)
    assert json.loads((tmp_path / "b" / "train_summary.json").read_text())["vae"]["resumed_from"] == 2


def test_target_minutes_sizes_the_steps_and_the_resolved_config_records_them(trained, tmp_path):
    cfg = ControlNetConfig(max_steps=40, target_minutes=0.01, batch_size=2, warmup_steps=1, checkpoint_every=100,
                           sampling={"steps": 2, "batch_size": 8})  # fmt: skip
    run = train_controlnet(cfg, trained / "data", trained / "base", tmp_path / "t")
    s = json.loads((run / "train_summary.json").read_text())["controlnet"]
    assert s["probe"]["target_minutes"] == 0.01 and 1 <= s["steps"] == s["max_steps"] == s["probe"]["steps"] <= 40
    resolved = load_config(ControlNetConfig, run / "config.yaml")
    assert resolved.max_steps == s["steps"] and resolved.target_minutes is None


def test_base_minutes_split_between_autoencoder_and_unet():
    cfg = ControlNetBaseConfig(max_minutes=10, target_minutes=20, vae_share=0.4)
    assert stage_minutes(cfg, "vae") == {"max_minutes": 4.0, "target_minutes": 8.0}
    assert stage_minutes(cfg, "unet", 3.0) == {"max_minutes": 7.0, "target_minutes": 17.0}  # what the vae left
    assert stage_minutes(cfg, "unet", 12.0)["max_minutes"] == 0.5  # never nothing
    assert stage_minutes(ControlNetBaseConfig(), "unet", 3.0) == {"max_minutes": None, "target_minutes": None}


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
    sets = [s for s in TINY_BASE if not s.startswith("vae.max_steps")] + ["vae.max_steps=0", "unet.max_steps=2"]
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


HUB_CHECK = """
import sys, torch
from diffusers import AutoencoderKL
from terrasynth.errors import UserError
from terrasynth.models.latent_base import load_base
b = load_base("terrasynth-test/tiny-sd")
ref = AutoencoderKL.from_pretrained(sys.argv[1]).state_dict()
print(b.source, b.path, b.factor, tuple(b.context.shape), all(torch.equal(v, ref[k]) for k, v in b.vae.state_dict().items()))
try:
    load_base("terrasynth-test/missing")
except UserError as exc:
    print(exc)
"""


def test_hub_id_base_resolves_from_the_hub_cache_and_offline_is_one_line(tmp_path):
    """--base org/name as users with internet type it: diffusers' from_pretrained finds it in a Hub cache
    folder (the layout the Hub client writes; HF_HUB_OFFLINE=1, read at import: a subprocess); a
    missing one is a one-line error that says how to pass a local directory instead."""
    import os
    import subprocess
    import sys

    from terrasynth.models.latent_base import is_hub_id

    snap = tmp_path / "hf" / "hub" / "models--terrasynth-test--tiny-sd" / "snapshots" / ("a" * 40)
    tiny_sd_checkpoint(snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", HUB_CHECK, str(snap / "vae")], env=env, capture_output=True, text=True,
                         timeout=180, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    loaded, err = out.stdout.strip().splitlines()
    assert loaded.split() == ["pretrained", "terrasynth-test/tiny-sd", "8", "(1,", "8,", "16)", "True"]
    assert err.startswith("--base terrasynth-test/missing: cannot load") and "--base DIR" in err
    assert "Warning" not in out.stderr
    assert is_hub_id("org/name") and not is_hub_id(snap) and not is_hub_id("runs/a/b")


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


# ---- the model contract: image autoencoder, latent UNet, ControlNet (32 px, channels 8/16/32) ---

K = 6  # dronedeploy classes


def _image_vae():
    from terrasynth.models.autoencoder import build_autoencoder

    return build_autoencoder(3, latent_channels=4, block_out_channels=(8, 16, 16), norm_num_groups=8, sample_size=32)


def _context_unet():
    from terrasynth.models.latent_base import ContextUNet, build_latent_unet

    unet = build_latent_unet(4, 8, block_out_channels=(16, 32), cross_attention=(False, True), layers_per_block=1,
                             cross_attention_dim=16, attention_head_dim=8)  # fmt: skip
    return ContextUNet(unet, torch.randn(1, 2, 16))


def _base_round_trip(vae, cunet, path):
    """The base's own layout: save_trained_base, then load_base."""
    from diffusers import DDPMScheduler

    from terrasynth.models.latent_base import save_trained_base

    save_trained_base(path, vae, cunet.unet, DDPMScheduler(), cunet.context, torch.zeros(4), torch.ones(4))
    return load_base(path)


def _latents():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 900])


class TestImageAutoencoderContract(ModelContract):
    expected_shape = (2, 3, 32, 32)

    def build(self):
        return _image_vae()

    def inputs(self):
        return (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1,)

    def save_load(self, model, path):
        return _base_round_trip(model, _context_unet(), path).vae


class TestLatentUNetContract(ModelContract):
    """The base denoiser with its learned constant context (what train-base trains)."""

    expected_shape = (2, 4, 8, 8)
    round_trip_atol = 1e-6  # the reloaded UNet's attention may differ in the last bit

    def build(self):
        return _context_unet()

    def inputs(self):
        return _latents()

    def save_load(self, model, path):
        from terrasynth.models.latent_base import ContextUNet

        base = _base_round_trip(_image_vae(), model, path)
        return ContextUNet(base.unet, base.context)


class TestControlNetContract(ModelContract):
    # Residuals for the UNet's 4 down-block outputs and its mid block.
    expected_shape = [(2, 16, 8, 8), (2, 16, 8, 8), (2, 16, 4, 4), (2, 32, 4, 4), (2, 32, 4, 4)]
    # A fresh ControlNet's zero convolutions pass no gradient upstream (by design); the
    # graph must still reach those weights (checked: their gradients exist).
    zero_grad_ok = ("conv_in", "time_embedding", "controlnet_cond_embedding", "down_blocks", "mid_block.")

    def build(self):
        from terrasynth.models.latent_base import LatentBase

        cunet = _context_unet()
        base = LatentBase(_image_vae(), cunet.unet, None, cunet.context.detach(), None, "trained", "")
        return build_controlnet(base, K)

    def inputs(self):
        cond = torch.randint(0, K, (2, 32, 32), generator=torch.Generator().manual_seed(1))
        return (*_latents(), torch.nn.functional.one_hot(cond, K).permute(0, 3, 1, 2).float())

    def forward(self, model, inputs):
        x, t, cond = inputs
        ctx = torch.zeros(1, 2, 16).expand(x.shape[0], -1, -1)
        down, mid = model(x, t, encoder_hidden_states=ctx, controlnet_cond=cond, return_dict=False)
        return [*down, mid]

    def save_load(self, model, path):
        model.save_pretrained(path / CONTROLNET_DIR)
        return ControlNetModel.from_pretrained(path / CONTROLNET_DIR)
