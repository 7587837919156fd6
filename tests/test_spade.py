"""SPADE contract tests: tiny models (32 px, ngf 8), a tiny georeferenced paired dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from terrasynth.classes import load_scheme
from terrasynth.data.dataset import Dataset
from terrasynth.models.discriminators import MultiscalePatchGAN, OASISDiscriminator, labelmix
from terrasynth.models.spade import SPADEGenerator, load_generator
from terrasynth.train.diffaugment import diff_augment

from conftest import interrupt_after, SPADE_TINY, run_cli, spade_pairs
from model_contract import ModelContract

TINY = SPADE_TINY


def checkpoint(run: Path, step: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """The runner's SPADE checkpoint (the newest, or at ``step``): G, D and the EMA's shadow parameters."""
    ckpts = sorted((run / "checkpoints" / "spade").glob("step-*"))
    ck = ckpts[-1] if step is None else run / "checkpoints" / "spade" / f"step-{step:08d}"
    load = lambda name: torch.load(ck / name, map_location="cpu", weights_only=False)  # noqa: E731
    ema = [load(f.name) for f in sorted(ck.glob("custom_checkpoint_*.pkl"))]
    ema = next((e["shadow_params"] for e in ema if "shadow_params" in e), None)
    return {"G": load("pytorch_model.bin"), "D": load("pytorch_model_1.bin"), "ema": ema}


def assert_same(a: dict, b: dict) -> None:
    for k in a:
        assert torch.equal(a[k], b[k]), k


def scores_without_time(run: Path) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "minutes"} for s in json.loads((run / "scores.json").read_text())]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return spade_pairs(tmp_path_factory.mktemp("pairs") / "ds")


@pytest.fixture(scope="module")
def run(pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "spade"
    assert run_cli("spade", "train", "--data", pairs, "--out", out, "--max-steps", 4, *TINY,
                   "--set", "remedies.noise3d=true", "--set", "remedies.ema=true") == 0  # fmt: skip
    return out


def tiny_g(noise: str = "none") -> SPADEGenerator:
    torch.manual_seed(0)
    return SPADEGenerator(6, ngf=8, num_up=3, hidden=8, noise=noise, noise_dim=4).eval()


def masks_pair() -> torch.Tensor:
    a = torch.full((1, 32, 32), 4)
    b = a.clone()
    b[:, :, :16] = 2
    b[:, :4, :4] = 255  # nodata
    return torch.cat([a, b])


def test_generator_shape_range_and_label_dependence():
    from terrasynth.classes import one_hot

    g = tiny_g()
    m = masks_pair()
    with torch.no_grad():
        x = g(one_hot(m, 6))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert (x[0] - x[1]).abs().mean() > 1e-3  # different maps -> different images
    with pytest.raises(ValueError, match="divisible"):
        g(one_hot(torch.zeros(1, 30, 30, dtype=torch.long), 6))


def test_bilinear_upsampling_leaves_no_blocks():
    """model.upsample=bilinear: the last stage's input is not constant over 2x2 blocks (nearest's is,
    and its block edges at fixed positions showed as a grid in trained images)."""
    from terrasynth.classes import one_hot

    seen = {}
    for mode in ("nearest", "bilinear"):
        g = tiny_g()
        g.upsample = mode
        g.up[-1].register_forward_hook(lambda m, args, out, mode=mode: seen.update({mode: args[0]}))
        with torch.no_grad():
            g(one_hot(masks_pair(), 6))
    x = {k: v - v[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1) for k, v in seen.items()}
    assert float(x["nearest"].abs().max()) == 0 and float(x["bilinear"].abs().max()) > 1e-3


def test_3d_noise_gives_diverse_images_for_one_mask():
    from terrasynth.classes import one_hot

    g = tiny_g("3d")
    seg = one_hot(masks_pair()[:1].repeat(2, 1, 1), 6)
    with torch.no_grad():
        x = g(seg, torch.randn(2, 4, generator=torch.Generator().manual_seed(0)))
    assert (x[0] - x[1]).abs().mean() > 1e-4


def test_labelmix_keeps_each_class_region_whole():
    # The discriminators' shapes are in their model contracts below.
    real, fake = torch.ones(2, 3, 32, 32), -torch.ones(2, 3, 32, 32)
    m = masks_pair()
    mixed, mm = labelmix(real, fake, m, torch.Generator().manual_seed(1))
    # Each class region is wholly real or wholly fake.
    for b in range(2):
        for c in m[b].unique():
            vals = mixed[b, 0][m[b] == c].unique()
            assert len(vals) == 1


def test_diffaugment_moves_mask_with_image():
    img = torch.zeros(1, 3, 32, 32)
    img[:, :, 10:20, 10:20] = 1
    m = torch.zeros(1, 32, 32, dtype=torch.long)
    m[:, 10:20, 10:20] = 1
    (a,), ma = diff_augment([img], m, ("translation",), torch.Generator().manual_seed(3))
    assert torch.equal((a[0, 0] == 1), (ma[0] == 1))


def test_cli_train_finite_and_checkpoint_round_trip(run, pairs):
    scores = json.loads((run / "scores.json").read_text())
    assert [s["step"] for s in scores] == [2, 4]
    assert all(np.isfinite(s["score"]) for s in scores)
    meta = json.loads((run / "generator.json").read_text())
    assert meta["family"] == "spade" and (run / meta["checkpoint"]).is_file()
    assert (run / "config.yaml").is_file()
    assert [p.name for p in (run / "checkpoints" / "spade").iterdir()] and checkpoint(run, 4)["ema"] is not None
    # Round trip: a saved inference snapshot holds the EMA generator's weights at its step (the
    # final step's: a finished run keeps only its final training checkpoint).
    gen = load_generator(run)
    assert any(s["checkpoint"] == meta["checkpoint"] for s in scores)
    snap = load_file(run / "checkpoints" / "step_0000004.safetensors")
    ema = checkpoint(run, 4)["ema"]
    params = [snap[name] for name, _ in gen.net.named_parameters()]
    assert len(params) == len(ema) and all(torch.equal(p, e) for p, e in zip(params, ema))
    assert gen.describe() == {"family": "spade", "run": str(run), "checkpoint": meta["checkpoint"]}


def test_generate_deterministic_given_generator(run):
    gen = load_generator(run)
    m = masks_pair()
    a = gen.generate(m, torch.Generator().manual_seed(5))
    b = gen.generate(m, torch.Generator().manual_seed(5))
    c = gen.generate(m, torch.Generator().manual_seed(6))
    assert a.shape == (2, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # 3D noise on: another draw, another image


def test_resume_is_exact(pairs, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    base = ["spade", "train", "--data", pairs, *TINY, "--set", "remedies.discriminator=oasis",
            "--set", "remedies.labelmix=true", "--set", "remedies.diffaugment=[color,translation,cutout]"]  # fmt: skip
    assert run_cli(*base, "--out", full, "--max-steps", 4) == 0
    assert run_cli(*base, "--out", part, "--max-steps", 2) == 0
    # 2 steps, checkpoint_every 2: one snapshot, nothing to choose between, so no judge is trained
    assert not (part / "checkpoints" / "judge").exists() and "judge_miou" not in scores_without_time(part)[0]
    assert run_cli(*base, "--out", part, "--max-steps", 4) == 0
    # extended to two snapshots: the judge trains then and scores the first snapshot too, as in the full run
    assert (part / "checkpoints" / "judge").is_dir() and all("judge_miou" in s for s in scores_without_time(part))
    a, b = checkpoint(full), checkpoint(part)
    assert_same(a["G"], b["G"])
    assert_same(a["D"], b["D"])
    assert scores_without_time(full) == scores_without_time(part)
    # Another config in the same run directory is refused, in one line.
    assert run_cli(*base, "--out", part, "--max-steps", 6, "--set", "model.ngf=16") == 2
    assert "spade run made with a different model.ngf (8 vs 16)" in capsys.readouterr().err
    assert run_cli(*base, "--out", part, "--set", "select.judge_steps=3") == 2
    assert "run made with a different select.judge_steps (2 vs 3)" in capsys.readouterr().err


def test_bad_config_is_a_user_error(pairs, tmp_path, capsys):
    assert run_cli("spade", "train", "--data", pairs, "--out", tmp_path / "r", "--set", "remedies.labelmix=true") == 2
    assert "labelmix" in capsys.readouterr().err
    assert run_cli("spade", "train", "--data", pairs, "--out", tmp_path / "r", "--set", "model.latent_size=3") == 2
    assert run_cli("spade", "train", "--data", pairs, "--out", tmp_path / "r", "--set", "loss.diversity=1") == 2
    assert "set remedies.noise3d=true or loss.diversity=0" in capsys.readouterr().err


def test_synthesize_keeps_georeference_and_split(run, pairs, tmp_path):
    from terrasynth.synthesize import synthesize

    out = synthesize(run, pairs, tmp_path / "syn", seed=0, batch_size=5)
    src = Dataset.open(pairs)
    assert out.info.kind == "synthetic"
    assert {r.id: r.split for r in out.records} == {r.id: r.split for r in src.records}
    for r_out, r_src in zip(sorted(out.records, key=lambda r: r.id), sorted(src.records, key=lambda r: r.id)):
        assert r_out.crs == r_src.crs and r_out.bounds == r_src.bounds
        assert out.read_label_georef(r_out)[1:] == src.read_label_georef(r_src)[1:]
        assert np.array_equal(out.read_label(r_out), src.read_label(r_src))
    assert out.info.provenance["generator"]["family"] == "spade"


def test_preview_grid(run, pairs, tmp_path):
    assert run_cli("spade", "preview", "--generator", run, "--data", pairs, "--out", tmp_path / "g.png", "-n", 3) == 0
    assert (tmp_path / "g.png").stat().st_size > 0


def test_shipped_config_tiny_twin(pairs, tmp_path):
    """configs/spade.yaml loads and runs end to end with tiny sizes."""
    from conftest import ROOT

    out = tmp_path / "r"
    assert run_cli("spade", "train", "--data", pairs, "--config", ROOT / "configs" / "spade.yaml", "--out", out,
                   "--max-steps", 2, *TINY) == 0  # fmt: skip
    assert json.loads((out / "generator.json").read_text())["step"] == 2


def test_vgg_loss_needs_local_weights(tmp_path):
    from pydantic import ValidationError

    from terrasynth.errors import UserError
    from terrasynth.train.gan import SpadeLossConfig
    from terrasynth.train.gan_losses import VGGLoss

    with pytest.raises(ValidationError, match="vgg_weights"):
        SpadeLossConfig(vgg=10)
    with pytest.raises(UserError, match="not found"):
        VGGLoss(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not a torchvision vgg19"):
        VGGLoss(bad)


def test_keeps_only_best_snapshots(pairs, tmp_path):
    out = tmp_path / "r"
    assert run_cli("spade", "train", "--data", pairs, "--out", out, "--max-steps", 4, *TINY,
                   "--set", "checkpoint_every=1", "--set", "select.keep=1", "--set", "select.metric=last") == 0  # fmt: skip
    scores = json.loads((out / "scores.json").read_text())
    assert [s["step"] for s in scores] == [1, 2, 3, 4]
    assert [s["checkpoint"] is not None for s in scores] == [False, False, False, True]
    assert sorted(p.name for p in (out / "checkpoints").glob("*.safetensors")) == ["step_0000004.safetensors"]
    assert json.loads((out / "generator.json").read_text())["step"] == 4


def test_interrupted_then_resumed_equals_uninterrupted(pairs, tmp_path, monkeypatch):
    """Stopped by Ctrl-C at step 3 (after the checkpoint at 2), rerun: G, D, EMA and scores as if never stopped."""
    from terrasynth.train.gan import SpadeTrainer

    base = ["spade", "train", "--data", pairs, *TINY, "--max-steps", 4, "--set", "select.metric=last",
            "--set", "remedies.noise3d=true", "--set", "remedies.ema=true", "--set", "remedies.diffaugment=[color]",
            "--set", "loss.diversity=1"]  # fmt: skip
    assert run_cli(*base, "--out", tmp_path / "full") == 0
    with monkeypatch.context() as m:
        interrupt_after(m, SpadeTrainer, 3)
        assert run_cli(*base, "--out", tmp_path / "part") == 130  # the CLI's Ctrl-C exit
    assert [p.name for p in (tmp_path / "part" / "checkpoints" / "spade").iterdir()] == ["step-00000002"]
    assert run_cli(*base, "--out", tmp_path / "part") == 0
    a, b = checkpoint(tmp_path / "full"), checkpoint(tmp_path / "part")
    assert_same(a["G"], b["G"])
    assert_same(a["D"], b["D"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))
    assert scores_without_time(tmp_path / "full") == scores_without_time(tmp_path / "part")


def test_mode_seeking_loss_pushes_two_noise_draws_apart():
    from terrasynth.train.gan_losses import mode_seeking_loss

    z1, z2 = torch.zeros(2, 4), torch.full((2, 4), 2.0)
    assert float(mode_seeking_loss(torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8), z1, z2)) == pytest.approx(2.0, 1e-4)
    # One gradient step on the term alone: the same masks with two noise codes differ more than before.
    g, seg = tiny_g("3d").train(), _seg()
    z1, z2 = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(0))
    a, b = g(seg, z1), g(seg, z2)
    before = float((a - b).abs().mean())
    mode_seeking_loss(a, b, z1, z2).backward()
    torch.optim.SGD(g.parameters(), lr=1e-4).step()
    with torch.no_grad():
        assert float((g(seg, z1) - g(seg, z2)).abs().mean()) > before


def spade_trainer(tmp_path: Path, *sets: str):
    """A tiny SpadeTrainer (6 classes, 32 px) on its own runner, not yet fitted, with 4 random tiles."""
    from terrasynth.accel import make_accelerator
    from terrasynth.config import load_config
    from terrasynth.train.gan import SpadeConfig, SpadeTrainer, build_spec
    from terrasynth.train.runner import Runner, fingerprint

    sets = ["model.ngf=8", "model.ndf=8", "model.hidden=8", "model.latent_size=4", "batch_size=2",
            "checkpoint_every=100", *sets]  # fmt: skip
    cfg = load_config(SpadeConfig, None, None, sets)
    runner = Runner(build_spec(cfg), make_accelerator(cpu=True), tmp_path, fingerprint({}), progress=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return runner, SpadeTrainer(cfg, 6, 32, runner, images, masks_pair().repeat(2, 1, 1).to(torch.uint8))


def test_diversity_term_is_off_by_default(tmp_path):
    """Weight 0 (the default): no second noise draw, no second generator pass, no g_ms in the logs."""
    from terrasynth.train.gan import SpadeConfig

    assert SpadeConfig().loss.diversity == 0
    for w in (0, 1):
        runner, tr = spade_trainer(tmp_path / str(w), "remedies.noise3d=true", f"loss.diversity={w}")
        logs = tr.update(tr.images.float().div(127.5).sub(1), tr.masks.long(), runner.generator(0))
        assert ("g_ms" in logs) == (w > 0) and all(np.isfinite(v) for v in logs.values())


@pytest.mark.slow  # 20 tiny G/D steps; minutes on a loaded 2-core machine
def test_diversity_term_makes_noise_draws_differ_more(tmp_path):
    """Same seed and steps: the generator trained with the mode-seeking term paints two noise draws of
    one mask further apart than the one trained without it."""
    from terrasynth.train.gan import generate_images

    spread = {}
    for w in (0, 10):
        runner, tr = spade_trainer(tmp_path / str(w), "max_steps=10", "remedies.noise3d=true", f"loss.diversity={w}")
        runner.fit(tr)
        a, b = (generate_images(tr.g, masks_pair(), 6, seed=s) for s in (0, 1))
        spread[w] = float((a - b).abs().mean())
    assert spread[10] > spread[0], spread  # measured 0.158 vs 0.133


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_warmup_forgets_the_initial_weights(warmup, tmp_path):
    """With warm-up, the EMA generator after 30 updates follows the trained weights; with a
    fixed 0.999 decay it stays near its start (the short-CPU-run trap)."""
    from terrasynth.accel import make_accelerator
    from terrasynth.config import load_config
    from terrasynth.train.gan import SpadeConfig, SpadeTrainer, build_spec
    from terrasynth.train.runner import Runner, ema_copy, fingerprint

    sets = ["model.ngf=8", "model.ndf=8", "model.hidden=8", "model.latent_size=4", "batch_size=2", "max_steps=30",
            "checkpoint_every=100", "remedies.ema=true", f"remedies.ema_warmup={str(warmup).lower()}",
            "optim.lr_g=0.01"]  # fmt: skip
    cfg = load_config(SpadeConfig, None, None, sets)
    runner = Runner(build_spec(cfg), make_accelerator(cpu=True), tmp_path, fingerprint({}), progress=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    tr = SpadeTrainer(cfg, 6, 32, runner, images, masks_pair().repeat(2, 1, 1).to(torch.uint8))
    init = torch.cat([p.detach().clone().ravel() for p in tr.g.parameters()])
    runner.fit(tr)
    assert runner.ema.optimization_step == 30
    assert runner.ema.cur_decay_value == pytest.approx(min(0.999, 30 / 39) if warmup else 0.999)
    ema = torch.cat([p.ravel() for p in ema_copy(runner, tr.G).parameters()])
    g = torch.cat([p.detach().ravel() for p in tr.g.parameters()])
    to_init, to_g = float((ema - init).norm()), float((ema - g).norm())
    assert (to_g < to_init) == warmup, (to_g, to_init)


def test_mixed_precision_bf16_trains_finite_and_differs_from_fp32(pairs, tmp_path):
    """bf16 autocast is real (other numbers than fp32) and stays finite; the run records it."""
    base = ["spade", "train", "--data", pairs, *TINY, "--max-steps", 2]
    assert run_cli(*base, "--out", tmp_path / "fp32") == 0
    assert run_cli(*base, "--out", tmp_path / "bf16", "--set", "mixed_precision=bf16") == 0
    a, b = checkpoint(tmp_path / "fp32")["G"], checkpoint(tmp_path / "bf16")["G"]
    assert all(torch.isfinite(t).all() for t in b.values() if t.is_floating_point())
    assert any(not torch.equal(a[k], b[k]) for k in a)
    scores = json.loads((tmp_path / "bf16" / "scores.json").read_text())
    assert all(np.isfinite(s["score"]) for s in scores)


# ---- the model contract: generator and both discriminators --------------------------------


def _seg(k: int = 6) -> torch.Tensor:
    from terrasynth.classes import one_hot

    return one_hot(masks_pair(), k)


class TestSPADEGeneratorContract(ModelContract):
    """The 3D-noise generator (the noise input must reach the weights too); saved as the trainer
    saves it: safetensors + generator.json, loaded by ``load_generator``."""

    kwargs = {"num_classes": 6, "ngf": 8, "num_up": 3, "hidden": 8, "noise": "3d", "noise_dim": 4}
    expected_shape = (2, 3, 32, 32)

    def build(self):
        return SPADEGenerator(**self.kwargs)

    def inputs(self):
        return _seg(), torch.randn(2, 4, generator=torch.Generator().manual_seed(0))

    def save_load(self, model, path):
        from safetensors.torch import save_file

        from terrasynth.models.generator import write_generator_file

        (path / "checkpoints").mkdir()
        save_file(
            {n: t.contiguous() for n, t in model.state_dict().items()}, str(path / "checkpoints" / "g.safetensors")
        )
        write_generator_file(path, "spade", checkpoint="checkpoints/g.safetensors", generator_kwargs=self.kwargs,
                             scheme=load_scheme("dronedeploy").to_dict())  # fmt: skip
        return load_generator(path).net


class DiscriminatorContract(ModelContract):
    """Discriminators are saved in the runner's checkpoint as a state dict (with the spectral-norm buffers)."""

    def save_load(self, model, path):
        torch.save(model.state_dict(), path / "d.pt")
        torch.manual_seed(123)
        fresh = self.build()
        fresh.load_state_dict(torch.load(path / "d.pt", weights_only=True))
        return fresh


class TestMultiscalePatchGANContract(DiscriminatorContract):
    expected_shape = [(2, 1, 6, 6), (2, 1, 2, 2)]  # final patch maps of both scales

    def build(self):
        return MultiscalePatchGAN(6, ndf=8, num_d=2)

    def inputs(self):
        return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1, _seg()

    def forward(self, model, inputs):
        return [scale[-1] for scale in model(*inputs)]


class TestPoolPatchGANContract(TestMultiscalePatchGANContract):
    """model.d_downsample=pool: conv + average pooling instead of stride-2 convs, same patch maps."""

    def build(self):
        return MultiscalePatchGAN(6, ndf=8, num_d=2, down="pool")


class TestOASISDiscriminatorContract(DiscriminatorContract):
    expected_shape = (2, 7, 32, 32)  # K classes + "fake", per pixel

    def build(self):
        return OASISDiscriminator(6, ndf=8, depth=3)

    def inputs(self):
        return (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1,)
