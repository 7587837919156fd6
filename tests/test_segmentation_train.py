"""Segmentation training end to end through the CLI: budgets, mixtures, exact resume, evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import interrupt_after, ROOT, make_dataset, run_cli
from terrasynth.accel import cpu_supports_bf16, machine_kind
from terrasynth.classes import ClassInfo, ClassScheme
from terrasynth.errors import UserError
from terrasynth.evaluate.segmentation import evaluate_segmentation
from terrasynth.train.segmentation import SegmentConfig, train_segmentation

ENC = "tu-mobilenetv3_small_050"
FAST = ["--encoder", ENC, "--batch-size", "4", "--set", "val_every=3", "--set", "checkpoint_every=2", "--set", "mixed_precision=no"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("seg") / "tiny", n=8)


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / f"{which}.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


def test_train_and_evaluate_through_the_cli(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    rc = run_cli("segment", "train", "--data", data, "--arch", "unet", "--out", run, "--max-steps", "4", "--seed", "1",
                 *FAST[:-2], "--set", "mixed_precision=auto")  # fmt: skip
    assert rc == 0
    for f in ("config.yaml", "run.json", "segmenter.json", "best.safetensors", "last.safetensors", "best.json"):
        assert (run / f).is_file(), f
    assert [p.name for p in (run / "checkpoints" / "segment").glob("step-*")] == ["step-00000004"]  # finished: final only
    assert list((run / "tb" / "segment").glob("events.out.tfevents.*"))
    info = json.loads((run / "run.json").read_text())
    assert info["validation"]["tiles"] > 0 and "held-out" in info["validation"]["chosen"]
    # auto precision is bf16 only on a CPU with native bf16: the run says which it got, and where
    assert info["mixed_precision"] == ("bf16" if cpu_supports_bf16() else "no")
    assert info["machine"] == f"{machine_kind()}, {info['mixed_precision']}"
    assert json.loads((run / "last.json").read_text())["step"] == 4

    out = tmp_path / "eval" / "m.json"
    assert run_cli("segment", "evaluate", "--model", run, "--data", data, "--out", out) == 0
    res = json.loads(out.read_text())
    for key in ("micro_iou", "macro_miou", "per_class_iou", "pixel_accuracy", "confusion", "n_tiles"):
        assert key in res
    assert set(res["per_class_iou"]) == {"1", "2", "3"}
    assert res["n_tiles"] == 2 and res["split"] == "test"
    conf = torch.tensor(res["confusion"])
    assert int(conf.sum()) == res["valid_pixels"] == 2 * (32 * 32 - 6)  # nodata pixels excluded
    assert res["pixel_accuracy"] == pytest.approx(float(conf.diag().sum() / conf.sum()))
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("code,name,iou") and len(csv_lines) == 1 + 3 + 3
    # Evaluating the same run again gives the same numbers.
    again = evaluate_segmentation(run, data, "test")
    assert again["confusion"] == res["confusion"]


@pytest.mark.slow
def test_training_learns_the_colour_coded_classes(data: Path, tmp_path: Path):
    cfg = SegmentConfig(arch="unet", encoder=ENC, batch_size=4, max_steps=40, lr=3e-3, val_every=20, checkpoint_every=40,
                        mixed_precision="no")  # fmt: skip
    run = train_segmentation(cfg, [(data, 1.0)], tmp_path / "run")
    res = evaluate_segmentation(run, data, "all", which="last")
    assert res["pixel_accuracy"] > 0.8, res["pixel_accuracy"]  # chance is about 1/3


def test_resume_after_stopping_reaches_the_same_weights(data: Path, tmp_path: Path, monkeypatch):
    # DeepLabV3+ has dropout in ASPP: this also checks that RNG states are restored.
    from terrasynth.train.segmentation import SegmentationFamily

    base = dict(arch="deeplabv3plus", encoder=ENC, batch_size=4, val_every=2, checkpoint_every=2, max_steps=6,
                mixed_precision="no")  # fmt: skip
    full = train_segmentation(SegmentConfig(**base), [(data, 1.0)], tmp_path / "full")
    part = tmp_path / "part"
    with monkeypatch.context() as m:
        interrupt_after(m, SegmentationFamily, 3)
        with pytest.raises(KeyboardInterrupt):
            train_segmentation(SegmentConfig(**base), [(data, 1.0)], part)
    assert json.loads((part / "last.json").read_text())["step"] == 2
    train_segmentation(SegmentConfig(**base), [(data, 1.0)], part)
    assert_same_weights(weights(full), weights(part))
    # A finished run is not trained again; a different config is refused; --restart starts over.
    before = (part / "last.safetensors").stat().st_mtime_ns
    train_segmentation(SegmentConfig(**base), [(data, 1.0)], part)
    assert (part / "last.safetensors").stat().st_mtime_ns == before
    with pytest.raises(UserError, match=r"different lr \(0.001 vs 0.01\).*--restart"):
        train_segmentation(SegmentConfig(**{**base, "lr": 0.01}), [(data, 1.0)], part)
    train_segmentation(SegmentConfig(**{**base, "lr": 0.01, "max_steps": 2}), [(data, 1.0)], part, resume=False)
    assert json.loads((part / "last.json").read_text())["step"] == 2


def test_a_run_resumed_on_another_machine_kind_names_both(tmp_path: Path):
    from terrasynth.train.segmentation import _machines

    f = tmp_path / "run.json"
    assert _machines(f, "cpu: B, bf16") == "cpu: B, bf16"  # a new run
    f.write_text(json.dumps({"machine": "cpu: A, no"}))
    assert _machines(f, "cpu: A, no") == "cpu: A, no"  # resumed where it started
    assert _machines(f, "cpu: B, bf16") == "cpu: A, no then cpu: B, bf16"
    f.write_text(json.dumps({"machine": "cpu: A, no then cpu: B, bf16"}))
    assert _machines(f, "cpu: B, bf16") == "cpu: A, no then cpu: B, bf16"


def test_target_minutes_sizes_the_steps_and_writes_them_to_the_resolved_config(data: Path, tmp_path: Path):
    import yaml

    cfg = SegmentConfig(arch="unet", encoder=ENC, batch_size=4, max_steps=10_000, target_minutes=0.05,
                        val_every=1000, checkpoint_every=1000, mixed_precision="no")  # fmt: skip
    run = train_segmentation(cfg, [(data, 1.0)], tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    steps = info["max_steps"]
    assert 1 <= steps < 10_000 and info["budget"]["steps"] == steps and info["budget"]["seconds_per_step"] > 0
    assert json.loads((run / "last.json").read_text())["step"] == steps
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["max_steps"] == steps and resolved["target_minutes"] is None
    # the resolved config alone reproduces the run
    again = train_segmentation(SegmentConfig.model_validate(resolved), [(data, 1.0)], tmp_path / "again")
    assert_same_weights(weights(run), weights(again))


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_same_weights(data: Path, tmp_path: Path):
    args = ["segment", "train", "--data", str(data), "--arch", "unet", "--max-steps", "14",
            *FAST]  # fmt: skip
    assert run_cli(*args, "--out", tmp_path / "full") == 0

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TQDM_DISABLE="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "terrasynth", *args, "--out", str(killed)], env=env)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "segment" / "step-00000004").exists():
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = max(int(p.name.split("-")[1]) for p in (killed / "checkpoints" / "segment").glob("step-*"))
    assert step_at_kill < 14
    assert run_cli(*args, "--out", killed) == 0
    assert_same_weights(weights(tmp_path / "full"), weights(killed))


def test_mixture_training_and_scheme_mismatch(data: Path, tmp_path: Path, capsys):
    other = make_dataset(tmp_path / "other", n=4, seed=7, splits=("train",), name="other")
    run = tmp_path / "mix"
    rc = run_cli("segment", "train", "--data", data, "--weight", "0.25", "--data", other, "--weight", "0.75",
                 "--arch", "unetplusplus", "--out", run, "--max-steps", "2", *FAST)  # fmt: skip
    assert rc == 0
    info = json.loads((run / "run.json").read_text())
    assert [d["weight"] for d in info["data"]] == [0.25, 0.75]

    scheme = ClassScheme("two", (ClassInfo(1, "a", (1, 1, 1)), ClassInfo(2, "b", (2, 2, 2))), nodata=0)
    wrong = make_dataset(tmp_path / "wrong", n=4, scheme=scheme, name="wrong")
    capsys.readouterr()
    rc = run_cli("segment", "train", "--data", data, "--data", wrong, "--arch", "unet", "--out", tmp_path / "bad", *FAST)
    err = capsys.readouterr().err
    assert rc == 2 and "differs from" in err and err.count("\n") == 1
    assert not (tmp_path / "bad" / "best.safetensors").exists()
    rc = run_cli("segment", "train", "--data", data, "--data", other, "--weight", "1", "--arch", "unet",
                 "--out", tmp_path / "bad2")  # fmt: skip
    assert rc == 2 and "--weight" in capsys.readouterr().err
    with pytest.raises(UserError, match="differs from the model"):
        evaluate_segmentation(run, wrong, "all")


def test_bad_config_key_is_one_line(data: Path, tmp_path: Path, capsys):
    rc = run_cli("segment", "train", "--data", data, "--out", tmp_path / "r", "--set", "learning_rate=0.1")
    assert rc == 2 and "unknown key 'learning_rate'" in capsys.readouterr().err


def test_shipped_config_runs_end_to_end(data: Path, tmp_path: Path):
    # The tiny twin of configs/segment-cpu.yaml: same file, tiny encoder and budget.
    run = tmp_path / "cfg"
    rc = run_cli("segment", "train", "--data", data, "--config", ROOT / "configs" / "segment-cpu.yaml",
                 "--out", run, "--max-steps", "2", *FAST)  # fmt: skip
    assert rc == 0
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["max_steps"] == 2 and resolved["encoder"] == ENC and resolved["max_minutes"] == 3


def test_tile_size_not_multiple_of_32_is_refused(tmp_path: Path):
    odd = make_dataset(tmp_path / "odd", n=2, size=40, splits=("train",), name="odd")
    with pytest.raises(UserError, match="not a multiple of 32"):
        train_segmentation(SegmentConfig(encoder=ENC, max_steps=1), [(odd, 1.0)], tmp_path / "run")


@pytest.mark.slow
def test_two_cpu_processes_through_accelerate(data: Path, tmp_path: Path):
    # DDP on CPU (gloo): torchrun starts the ranks, Accelerate picks them up.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TQDM_DISABLE="1", ACCELERATE_USE_CPU="true")
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "terrasynth", "segment", "train", "--data", str(data),
           "--arch", "unet", "--max-steps", "4", "--out", str(tmp_path / "ddp"), *FAST]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, timeout=300)
    info = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert info["processes"] == 2
    assert json.loads((tmp_path / "ddp" / "last.json").read_text())["step"] == 4


def test_init_weights_start_from_another_run_and_bad_files_are_one_line(data: Path, tmp_path: Path, capsys):
    """init_weights (the scarce experiment's pretrain recipe): a run starts from another run's weights."""
    base = dict(arch="unet", encoder=ENC, batch_size=4, max_steps=2, val_every=2, checkpoint_every=2, mixed_precision="no")
    first = train_segmentation(SegmentConfig(**base, seed=1), [(data, 1.0)], tmp_path / "first")
    # lr ~0: the second run ends where it started, i.e. at the first run's weights (its own seed would differ)
    tiny = {**base, "lr": 1e-12, "weight_decay": 0.0, "seed": 2}
    cold = train_segmentation(SegmentConfig(**tiny), [(data, 1.0)], tmp_path / "cold")
    warm = train_segmentation(SegmentConfig(**tiny, init_weights=str(first / "best.safetensors")), [(data, 1.0)], tmp_path / "warm")
    a, b, c = weights(first, "best"), weights(warm), weights(cold)
    conv = [k for k in a if k.endswith("weight") and a[k].dim() == 4]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in conv)
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in conv)
    # a missing file: exit 2 and no run folder; weights of another model: one line
    assert run_cli("segment", "train", "--data", data, "--out", tmp_path / "x", *FAST, "--set", "max_steps=1",
                   "--set", f"init_weights={tmp_path / 'nope.safetensors'}") == 2  # fmt: skip
    assert "nope.safetensors: no such file" in capsys.readouterr().err and not (tmp_path / "x").exists()
    other = SegmentConfig(**{**base, "arch": "deeplabv3plus"}, init_weights=str(first / "best.safetensors"))
    with pytest.raises(UserError, match="weights of another model"):
        train_segmentation(other, [(data, 1.0)], tmp_path / "y")
