"""The land-cover generator end to end through the CLI, on tiny (32 px, channels 8/16) models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from conftest import landcover_dataset, run_cli
from model_contract import ModelContract
from terrasynth.classes import WORLDCOVER
from terrasynth.data.dataset import Dataset
from terrasynth.errors import UserError
from terrasynth.evaluate.realism import as_maps
from terrasynth.models.latent_diffusion import LandcoverLDM
from terrasynth.inference.landcover import generate_maps, load_landcover, parse_composition

ROOT = Path(__file__).resolve().parents[1]
# The tiny twin of configs/landcover-cpu.yaml: the shipped file, shrunk by overrides.
TINY = [
    "--config", ROOT / "configs" / "landcover-cpu.yaml",
    "--set", "max_minutes=null",
    "--set", "autoencoder.block_out_channels=[8,16]", "--set", "autoencoder.norm_num_groups=8",
    "--set", "autoencoder.max_steps=12", "--set", "autoencoder.batch_size=8",
    "--set", "diffusion.block_out_channels=[16,16]", "--set", "diffusion.attention=[false,true]",
    "--set", "diffusion.norm_num_groups=8", "--set", "diffusion.max_steps=12", "--set", "diffusion.batch_size=8",
    "--set", "diffusion.warmup_steps=2", "--set", "diffusion.dihedral_augment=false",
    "--set", "sampling.steps=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return landcover_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "cond"
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", run, *TINY) == 0
    return run


def test_training_writes_model_and_loss_decreases(tiny_run):
    m = json.loads((tiny_run / "metrics.json").read_text())
    for phase in ("autoencoder", "diffusion"):
        curve = m[phase]["loss_curve"]
        assert m[phase]["steps"] == 12
        assert curve[-1] < curve[0], (phase, curve)
    assert 0.0 <= m["autoencoder"]["pixel_accuracy"] <= 1.0
    assert set(m["autoencoder"]["iou_by_code"]) == {str(c) for c in WORLDCOVER.codes}
    assert (tiny_run / "config.yaml").exists() and (tiny_run / "model" / "unet" / "config.json").exists()
    assert all(any((tiny_run / "tb" / stage).rglob("events.out.tfevents*")) for stage in ("autoencoder", "diffusion"))


def test_rerun_resumes_and_other_config_is_refused(tiny_run, tiny_data, capsys):
    final = tiny_run / "checkpoints" / "diffusion" / "step-00000012"
    before = final.stat().st_mtime_ns
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", tiny_run, *TINY) == 0
    assert [p.name for p in final.parent.iterdir()] == ["step-00000012"]  # nothing retrained past the bound
    assert final.stat().st_mtime_ns == before
    curve = json.loads((tiny_run / "metrics.json").read_text())["diffusion"]["loss_curve"]
    assert len(curve) >= 2  # the loss history survives a resume
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", tiny_run, *TINY, "--set", "seed=5") == 2
    err = capsys.readouterr().err
    assert "different seed (0 vs 5)" in err and "--restart" in err
    assert run_config(tiny_run)["seed"] == 0  # the refused config did not replace the run's


def run_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run / "model").rglob("*.safetensors")):
        out |= {f"{f.parent.name}/{k}": v for k, v in load_file(f).items()}
    return out


def test_interrupted_then_resumed_run_equals_uninterrupted(tiny_data, tmp_path, monkeypatch):
    """Stopped in each stage after a checkpoint and rerun, training ends with the weights (raw and EMA)
    of an uninterrupted run, on CPU."""
    from terrasynth.train import landcover as lc

    short = [*TINY, "--set", "autoencoder.max_steps=5", "--set", "diffusion.max_steps=5", "--set", "checkpoint_every=2"]
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", tmp_path / "ref", *short) == 0
    run = tmp_path / "run"
    for stage in (lc._AutoencoderStage, lc._DiffusionStage):
        step_fn = stage.training_step

        def stop_at_3(self, step, gen, step_fn=step_fn):
            if step == 3:
                raise KeyboardInterrupt
            return step_fn(self, step, gen)

        with monkeypatch.context() as m:
            m.setattr(stage, "training_step", stop_at_3)
            assert run_cli("landcover", "train", "--data", tiny_data, "--out", run, *short) == 130
    assert not (run / "model").exists()
    assert [p.name for p in (run / "checkpoints" / "diffusion").iterdir()] == ["step-00000002"]
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", run, *short) == 0
    ref, got = _weights(tmp_path / "ref"), _weights(run)
    assert {"autoencoder", "unet", "unet_ema"} <= {k.split("/")[0] for k in ref} and ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    steps = json.loads((run / "metrics.json").read_text())
    assert steps["autoencoder"]["steps"] == steps["diffusion"]["steps"] == 5
    # --restart starts both stages over, here with another seed the resume would refuse
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", run, *short, "--set", "seed=1", "--restart") == 0
    assert run_config(run)["seed"] == 1
    assert not torch.equal(ref["unet/conv_in.weight"], _weights(run)["unet/conv_in.weight"])


def test_minutes_split_by_share_and_target_sizes_steps(tiny_data, tmp_path):
    from terrasynth.train.landcover import LandcoverConfig, _runner

    cfg = LandcoverConfig(max_minutes=10, target_minutes=4, checkpoint_every=7, autoencoder={"share": 0.25})
    ae = _runner(cfg, "autoencoder", 11, 0.25, 0.0, tmp_path, {}, True).spec
    assert (ae.max_minutes, ae.target_minutes, ae.checkpoint_every, ae.ema_decay) == (2.5, 1.0, 7, None)
    dm = _runner(cfg, "diffusion", 13, 1.0, 1.5, tmp_path, {}, True).spec  # what the autoencoder and encoding left
    assert (dm.max_minutes, dm.target_minutes, dm.max_steps, dm.ema_decay) == (8.5, 2.5, 13, cfg.diffusion.ema_decay)
    # a target sizes each stage by a speed probe (here capped by max_steps); the run records the choice;
    # a stage no longer than the probe (6 steps) is not probed
    run = tmp_path / "run"
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", run, *TINY, "--target-minutes", 30,
                   "--set", "autoencoder.max_steps=8", "--set", "diffusion.max_steps=4") == 0  # fmt: skip
    m = json.loads((run / "metrics.json").read_text())
    assert m["autoencoder"]["probe"]["steps"] == m["autoencoder"]["steps"] == 8
    assert m["autoencoder"]["probe"]["target_minutes"] == pytest.approx(30 * cfg.autoencoder.share)
    assert m["diffusion"]["probe"] is None and m["diffusion"]["steps"] == 4
    assert run_config(run)["target_minutes"] == 30


def test_sample_writes_valid_synthetic_dataset(tiny_run, tmp_path):
    out = tmp_path / "samples"
    assert run_cli("landcover", "sample", "--model", tiny_run, "--n", 5, "--batch-size", 3, "--out", out) == 0
    ds = Dataset.open(out)
    assert ds.info.kind == "synthetic" and not ds.info.has_images and len(ds) == 5
    gen = ds.info.provenance["generator"]
    assert gen["family"] == "landcover-ldm" and len(gen["checkpoint"]) == 16
    maps = as_maps(ds)
    assert maps.shape == (5, 32, 32)
    assert set(np.unique(maps)) <= set(WORLDCOVER.codes)
    with rasterio.open(out / ds.records[0].label) as src:
        assert src.colormap(1)[50][:3] == WORLDCOVER.colours[4]
    # same command again: complete dataset, nothing rewritten
    assert run_cli("landcover", "sample", "--model", tiny_run, "--n", 5, "--batch-size", 3, "--out", out) == 0


def test_same_seed_same_maps(tiny_run):
    model = load_landcover(tiny_run)
    a, _ = generate_maps(model, 4, seed=3, batch_size=2, progress=False)
    b, _ = generate_maps(model, 4, seed=3, batch_size=2, progress=False)
    c, _ = generate_maps(model, 4, seed=4, batch_size=2, progress=False)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "unipc"])
def test_samplers_by_name(tiny_run, sampler):
    model = load_landcover(tiny_run)
    maps, _ = generate_maps(model, 2, sampler=sampler, steps=3, progress=False)
    assert maps.shape == (2, 32, 32) and set(np.unique(maps)) <= set(WORLDCOVER.codes)


def test_save_load_round_trip(tiny_run, tmp_path):
    model = LandcoverLDM.from_pretrained(tiny_run / "model")
    model.save_pretrained(tmp_path / "copy")
    again = LandcoverLDM.from_pretrained(tmp_path / "copy")
    comp = model.composition_vector({50: 0.5})
    x = model.generate(2, torch.Generator().manual_seed(0), composition=comp, guidance=2.0)
    y = again.generate(2, torch.Generator().manual_seed(0), composition=comp, guidance=2.0)
    assert torch.equal(x, y)
    assert torch.equal(model.train_compositions, again.train_compositions)


def test_composition_parsing_and_errors(tiny_run, tmp_path, capsys):
    assert parse_composition("50:0.3,80:0.2", WORLDCOVER.codes) == {50: 0.3, 80: 0.2}
    for bad in ("50:0.8,80:0.5", "55:0.1", "50=0.3"):
        with pytest.raises(UserError):
            parse_composition(bad, WORLDCOVER.codes)
    rc = run_cli("landcover", "sample", "--model", tiny_run, "--n", 2, "--composition", "55:0.2", "--out", tmp_path / "x")
    assert rc == 2 and "55" in capsys.readouterr().err
    vec = load_landcover(tiny_run).composition_vector({50: 0.3})
    assert float(vec.sum()) == pytest.approx(1.0) and float(vec[4]) == pytest.approx(0.3)


def test_unconditional_model_refuses_composition(tiny_data, tmp_path, capsys):
    run = tmp_path / "uncond"
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", run, *TINY,
                   "--set", "autoencoder.max_steps=2", "--set", "diffusion.max_steps=2",
                   "--set", "diffusion.composition_control=false") == 0  # fmt: skip
    model = load_landcover(run)
    assert not model.conditional
    rc = run_cli("landcover", "sample", "--model", run, "--n", 2, "--composition", "50:0.5", "--out", tmp_path / "s")
    assert rc == 2 and "composition" in capsys.readouterr().err


def test_evaluate_command_writes_metrics(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "realism.json"
    assert run_cli("landcover", "evaluate", "--model", tiny_run, "--n", 4, "--real", tiny_data,
                   "--composition", "50:0.6", "--out", out) == 0  # fmt: skip
    m = json.loads(out.read_text())
    assert 0.0 <= m["class_jsd"] <= 1.0
    assert m["num_generated"] == 4 and m["num_real"] == 4  # the val split
    assert m["composition"]["classes"]["50"]["requested"] == 0.6
    assert m["memorisation"]["min_disagreement"] >= 0.0


def test_bad_tile_size_is_one_line_error(tiny_data, tmp_path, capsys):
    rc = run_cli("landcover", "train", "--data", tiny_data, "--out", tmp_path / "r", *TINY,
                 "--set", "autoencoder.block_out_channels=[8,8,8,8]", "--set", "diffusion.block_out_channels=[16,16,16,16]",
                 "--set", "diffusion.attention=[false,false,false,true]")  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "not divisible" in err and len(err.strip().splitlines()) == 1
    six = ["--set", "discrete.block_out_channels=[8,8,8,8,8,8]", "--set", f"discrete.attention=[{'false,' * 5}false]"]
    rc = run_cli("landcover", "train", "--data", tiny_data, "--out", tmp_path / "d", *TINY_DISCRETE, *six)
    err = capsys.readouterr().err
    assert rc == 2 and "not divisible by 64 (discrete.patch" in err and len(err.strip().splitlines()) == 1


def test_paper_config_is_valid_and_downsamples_by_8():
    from terrasynth.config import load_config
    from terrasynth.models.autoencoder import build_autoencoder, downsampling_factor
    from terrasynth.train.landcover import LandcoverConfig

    cfg = load_config(LandcoverConfig, ROOT / "configs" / "landcover-paper.yaml")
    a = cfg.autoencoder
    vae = build_autoencoder(11, latent_channels=a.latent_channels, block_out_channels=tuple(a.block_out_channels),
                            layers_per_block=1, norm_num_groups=a.norm_num_groups, sample_size=512)  # fmt: skip
    assert downsampling_factor(vae) == 8
    levels = 2 ** (len(cfg.diffusion.block_out_channels) - 1)
    assert 512 % (8 * levels) == 0 and cfg.diffusion.attention == [False, False, True, True]


# ---- the model contract: categorical autoencoder and latent denoisers (16 px, channels 8/16) ---

K = WORLDCOVER.num_classes


def _vae():
    from terrasynth.models.autoencoder import build_autoencoder

    return build_autoencoder(K, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=8, sample_size=16)


def _denoiser(composition_classes: int | None = None):
    from terrasynth.models.latent_diffusion import build_denoiser

    return build_denoiser(4, 8, block_out_channels=(8, 16), layers_per_block=1, attention=(False, True),
                          attention_head_dim=4, norm_num_groups=8, composition_classes=composition_classes)  # fmt: skip


def _ldm_round_trip(vae, unet, path: Path) -> LandcoverLDM:
    """LandcoverLDM's own save_pretrained / from_pretrained."""
    from terrasynth.models.diffusion import LatentNorm

    norm = LatentNorm(torch.zeros(4), std=torch.ones(4))
    LandcoverLDM(vae, unet, {"num_train_timesteps": 1000}, norm, WORLDCOVER).save_pretrained(path)
    return LandcoverLDM.from_pretrained(path)


class TestCategoricalAutoencoderContract(ModelContract):
    expected_shape = (2, K, 16, 16)  # class logits back from the posterior's mode

    def build(self):
        return _vae()

    def inputs(self):
        from terrasynth.classes import one_hot

        return (one_hot(torch.randint(0, K, (2, 16, 16), generator=torch.Generator().manual_seed(0)), K),)

    def save_load(self, model, path):
        return _ldm_round_trip(model, _denoiser(), path).vae


class TestLatentDenoiserContract(ModelContract):
    composition_classes: int | None = None
    expected_shape = (2, 4, 8, 8)

    def build(self):
        return _denoiser(self.composition_classes)

    def inputs(self):
        g = torch.Generator().manual_seed(0)
        x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 700])
        if self.composition_classes is None:
            return x, t
        return x, t, torch.softmax(torch.randn(2, K, generator=g), 1)

    def forward(self, model, inputs):
        from terrasynth.models.latent_diffusion import denoise

        return denoise(model, *inputs)

    def save_load(self, model, path):
        return _ldm_round_trip(_vae(), model, path).unet


class TestCompositionDenoiserContract(TestLatentDenoiserContract):
    """The composition-controlled denoiser: the (B, K) fractions reach the weights and survive a round trip."""

    composition_classes = K


# ---- the masked discrete generator (generator: discrete): the label grid itself, no autoencoder ----

TINY_DISCRETE = [
    "--config", ROOT / "configs" / "landcover-cpu.yaml", "--set", "generator=discrete", "--set", "max_minutes=null",
    "--set", "discrete.block_out_channels=[16,16]", "--set", "discrete.attention=[false,true]",
    "--set", "discrete.norm_num_groups=8", "--set", "discrete.max_steps=6", "--set", "discrete.batch_size=4",
    "--set", "discrete.warmup_steps=2", "--set", "discrete.steps=4", "--set", "checkpoint_every=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def discrete_run(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "discrete"
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", run, *TINY_DISCRETE) == 0
    return run


def test_discrete_trains_through_the_runner_and_samples_valid_codes(discrete_run, tiny_data, tmp_path):
    m = json.loads((discrete_run / "metrics.json").read_text())
    assert m["discrete"]["steps"] == 6 and not (discrete_run / "model" / "autoencoder").exists()
    assert (discrete_run / "model" / "unet_ema" / "config.json").exists()
    final = discrete_run / "checkpoints" / "discrete" / "step-00000006"
    before = final.stat().st_mtime_ns
    assert run_cli("landcover", "train", "--data", tiny_data, "--out", discrete_run, *TINY_DISCRETE) == 0
    assert final.stat().st_mtime_ns == before  # finished: the rerun resumed and did nothing
    out = tmp_path / "samples"
    rc = run_cli("landcover", "sample", "--model", discrete_run, "--n", 3, "--sampler", "ancestral", "--out", out)
    assert rc == 0
    ds = Dataset.open(out)
    assert ds.info.provenance["generator"]["family"] == "landcover-mdm" and ds.info.tile_size == 32
    maps = as_maps(ds)
    assert maps.shape == (3, 32, 32) and set(np.unique(maps)) <= set(WORLDCOVER.codes)  # never nodata or MASK


def test_discrete_follows_requested_composition_and_seed(discrete_run):
    from terrasynth.evaluate.realism import compositions

    model = load_landcover(discrete_run)
    for reveal in ("random", "confident"):
        model.reveal = reveal
        for request in ({50: 0.6}, {10: 0.5, 90: 0.04}):  # wetland: a class the training maps never hold
            maps, _ = generate_maps(model, 2, composition=request, seed=1, progress=False)
            got = compositions(maps, model.scheme).mean(0)
            assert all(abs(got[model.scheme.codes.index(c)] - f) < 0.05 for c, f in request.items()), (reveal, got)
    model.reveal = "random"
    a, _ = generate_maps(model, 2, seed=3, progress=False)
    b, _ = generate_maps(model, 2, seed=3, progress=False)
    c, _ = generate_maps(model, 2, seed=4, progress=False)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(UserError, match="masked-diffusion samplers"):
        generate_maps(model, 1, sampler="ddim", progress=False)


def test_match_composition_hits_the_target_in_expectation():
    from terrasynth.models.masked_diffusion import match_composition

    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(2, K, 8, 8, generator=g), 1)
    x = torch.where(torch.rand(2, 8, 8, generator=g) < 0.7, K, torch.randint(0, K, (2, 8, 8), generator=g))
    target = torch.softmax(torch.randn(2, K, generator=g), 1)
    q = match_composition(p, x, target, iters=50)
    masked = (x == K).unsqueeze(1)
    have = torch.nn.functional.one_hot(x.clamp(max=K - 1), K).permute(0, 3, 1, 2) * ~masked
    expected = (have + q * masked).sum((2, 3)) / 64
    reachable = (target * 64 - have.sum((2, 3))).clamp_min(0).sum(1) > 0
    assert torch.allclose(q.sum(1), torch.ones(2, 8, 8), atol=1e-5) and reachable.all()
    assert (expected - target).abs().max() < 0.03 + (have.sum((2, 3)) / 64 - target).clamp_min(0).max()


def _label_denoiser():
    from terrasynth.models.masked_diffusion import build_label_denoiser

    return build_label_denoiser(K, 16, patch=2, block_out_channels=(8, 16), layers_per_block=1, attention=(False, True),
                                attention_head_dim=4, norm_num_groups=8)  # fmt: skip


class TestLabelDenoiserContract(ModelContract):
    """The masked-diffusion UNet: partly masked maps (index K = MASK), times in [0, 1] and (B, K) compositions."""

    expected_shape = (2, K, 16, 16)

    def build(self):
        return _label_denoiser()

    def inputs(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, K + 1, (2, 16, 16), generator=g)
        return x, torch.tensor([0.1, 0.9]), torch.softmax(torch.randn(2, K, generator=g), 1)

    def forward(self, model, inputs):
        from terrasynth.models.masked_diffusion import label_logits

        return label_logits(model, *inputs)

    def save_load(self, model, path):
        from terrasynth.models.masked_diffusion import LandcoverMDM

        LandcoverMDM(model, WORLDCOVER, train_compositions=torch.full((3, K), 1 / K)).save_pretrained(path)
        return LandcoverMDM.from_pretrained(path).unet


def test_confident_reveal_unmasks_the_most_probable_pixels_first(monkeypatch):
    """MaskGIT ordering on a hand-made predictor: the left half is sure of class 0, the right half uniform."""
    import terrasynth.models.masked_diffusion as md

    seen: list[torch.Tensor] = []

    def fake_logits(unet, x, t, cond=None):
        seen.append(x.clone())
        logits = torch.zeros(x.shape[0], K, *x.shape[1:])
        logits[:, 0, :, :8] = 12.0  # p(class 0) ~ 1 on the left half
        return logits

    monkeypatch.setattr(md, "label_logits", fake_logits)
    model = md.LandcoverMDM(_label_denoiser(), WORLDCOVER, train_compositions=torch.full((3, K), 1 / K),
                            default_sampler="ancestral", default_steps=8, reveal="confident", reveal_noise=0.0)  # fmt: skip
    out = model.generate(2, torch.Generator().manual_seed(0))
    assert (out < K).all() and (out[:, :, :8] == 0).all()
    counts = [(x < K).sum((1, 2)) for x in seen] + [torch.full((2,), 256)]
    schedule = [256 - math.floor(md.mask_rate(t).item() * 256) for t in torch.linspace(1.0, 0.0, 9)]
    assert [c.tolist() for c in counts] == [[s, s] for s in schedule]  # the chain's count per step, exactly
    for x in seen:  # while the sure half is not used up, nothing on the uncertain half is revealed
        left = (x[:, :, :8] < K).sum((1, 2))
        assert ((x[:, :, 8:] < K).sum((1, 2)) == (left == 128) * ((x < K).sum((1, 2)) - 128)).all()
    model.reveal = "random"
    seen.clear()
    model.generate(2, torch.Generator().manual_seed(0))
    assert any((x[:, :, 8:] < K).any() and (x[:, :, :8] == K).any() for x in seen)  # the chain mixes both halves
