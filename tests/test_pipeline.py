"""Pipeline orchestration: cache keys, skipping, resume, --from/--only (stage bodies stubbed out
with recorders, so this tests the orchestrator itself; tests/test_pipeline_e2e.py runs the real stages)."""

import json

import pytest

import terrasynth.pipeline as pl
from terrasynth.config import load_config
from terrasynth.errors import UserError
from terrasynth.pipeline import STAGES, PipelineConfig, run_pipeline, stage_keys


def _changed(a: dict, b: dict) -> set[str]:
    return {s for s in STAGES if a[s] != b[s]}


def _cfg(*sets):
    return load_config(PipelineConfig, sets=list(sets))


def test_cache_keys_change_when_and_only_when_relevant():
    base = stage_keys(_cfg())
    assert base == stage_keys(_cfg())
    assert _changed(base, stage_keys(_cfg("segment.train.max_steps=7"))) == {"segment", "evaluate", "mixing", "report"}
    assert _changed(base, stage_keys(_cfg("spade.max_steps=7"))) == {"spade", "datasets", "segment", "evaluate", "mixing", "report"}
    assert _changed(base, stage_keys(_cfg("mixing.fractions=[0.5]"))) == {"mixing", "report"}
    assert _changed(base, stage_keys(_cfg("report.sample_rows=2"))) == {"report"}
    assert _changed(base, stage_keys(_cfg("controlnet_base.unet.max_steps=7"))) == {
        "controlnet_base", "controlnet", "datasets", "segment", "evaluate", "mixing", "report"}  # fmt: skip
    assert _changed(base, stage_keys(_cfg("data.world.seed=3"))) == set(STAGES)


@pytest.fixture
def recorder(monkeypatch):
    calls = []

    def make(stage):
        def fn(ctx, d):
            calls.append(stage)
            if stage == ctx.cfg.name:  # the config's name says which stage "gets killed"
                raise KeyboardInterrupt
            (d / "artifact").write_text(stage)
            return {"artifact": str(d / "artifact")}

        return fn

    monkeypatch.setattr(pl, "STAGE_FUNCS", {s: make(s) for s in STAGES})
    return calls


def test_rerun_skips_and_interrupted_run_resumes(tmp_path, recorder):
    cfg = _cfg("name=segment")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path, progress=False)
    assert recorder == list(STAGES[: STAGES.index("segment") + 1])
    recorder.clear()
    state = run_pipeline(cfg.model_copy(update={"name": "none"}), tmp_path, progress=False)
    # name is not part of any stage key: finished stages are reused, the rest run
    assert recorder == list(STAGES[STAGES.index("segment"):])
    assert state["stages"]["data"]["status"] == "cached" and state["stages"]["report"]["status"] == "ran"
    recorder.clear()
    run_pipeline(_cfg("name=none"), tmp_path, progress=False)
    assert recorder == []
    assert json.loads((tmp_path / "pipeline.json").read_text())["stages"]["segment"]["status"] == "cached"


def test_from_and_only(tmp_path, recorder):
    cfg = _cfg("name=none")
    run_pipeline(cfg, tmp_path, progress=False)
    recorder.clear()
    run_pipeline(cfg, tmp_path, from_stage="evaluate", progress=False)
    assert recorder == ["evaluate", "mixing", "report"]
    recorder.clear()
    run_pipeline(cfg, tmp_path, only="mixing", progress=False)
    assert recorder == []  # cached, --only does not force
    run_pipeline(cfg, tmp_path, from_stage="mixing", only="mixing", progress=False)
    assert recorder == ["mixing"]
    with pytest.raises(UserError, match="input stage 'data'"):
        run_pipeline(_cfg("name=none", "data.world.seed=5"), tmp_path, only="spade", progress=False)
    with pytest.raises(UserError, match="unknown stage"):
        run_pipeline(cfg, tmp_path, only="nope", progress=False)


def test_config_errors_name_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("segment:\n  archs: [unet]\n  trian: {}\n")
    with pytest.raises(UserError, match="segment.trian.*allowed keys"):
        load_config(PipelineConfig, f)
    with pytest.raises(UserError, match="data.source is 'pairs'"):
        _cfg("data.source=pairs")


def test_second_run_on_the_same_directory_is_refused(tmp_path, recorder):
    import subprocess
    import sys

    from terrasynth.io import exclusive_dir

    cfg = _cfg("name=none")
    with exclusive_dir(tmp_path, "run"):  # as if another `terrasynth run` held the directory
        with pytest.raises(UserError, match=r"another terrasynth run \(pid \d+\) is using this directory"):
            run_pipeline(cfg, tmp_path, progress=False)
        assert recorder == [] and not (tmp_path / "pipeline.json").exists()
        # through the CLI: one line, exit code 2, before any stage starts
        p = subprocess.run([sys.executable, "-m", "terrasynth", "run", "demo", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert p.returncode == 2, p.stderr
        assert "another terrasynth run" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # released when the holder leaves (and by the kernel if it is killed): the run goes ahead
    run_pipeline(cfg, tmp_path, progress=False)
    assert recorder == list(STAGES)
    run_pipeline(cfg, tmp_path, progress=False)  # a finished run leaves no lock behind


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["data.world.size=48"], "not a multiple of 32"),
        (["spade.model.latent_size=3"], "latent size 3"),
        (["data.world.size=32", "landcover.autoencoder.block_out_channels=[16,16,16,16]",
          "landcover.diffusion.block_out_channels=[32,32,32,32]", "landcover.diffusion.attention=[false,false,false,true]"],
         "land-cover tiles of 32 px are not a multiple of 64"),
        (["data.world.size=32", "landcover.generator=discrete", "landcover.discrete.patch=8",
          "landcover.discrete.block_out_channels=[32,32,32,32]", "landcover.discrete.attention=[false,false,false,true]"],
         "land-cover tiles of 32 px are not a multiple of 64 \\(autoencoder or patch"),
        (["data.world.size=32", "controlnet_base.vae.block_out_channels=[32,64,64,64]",
          "controlnet_base.unet.block_out_channels=[32,64,96,128]",
          "controlnet_base.unet.cross_attention=[false,false,true,true]"], "ControlNet base"),
    ],
)
def test_cross_stage_constraints(sets, needle):
    cfg = load_config(PipelineConfig, None, None, sets)
    pl.check_pipeline(load_config(PipelineConfig))  # the defaults fit together
    with pytest.raises(UserError, match=needle):
        pl.check_pipeline(cfg)


def test_cross_stage_constraints_are_checked_before_any_stage(tmp_path, recorder):
    cfg = load_config(PipelineConfig, None, None, ["data.world.size=48"])
    with pytest.raises(UserError, match="data.world.size = 48 px is not a multiple of 32"):
        run_pipeline(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() and not recorder  # nothing started, nothing written
