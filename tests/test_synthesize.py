"""synthesize: output contract, determinism, resume and georeference, with a small stand-in generator.

The stand-in is a real (if simple) generator: class colour plus seeded noise, so that the
stage's mechanics are tested independently of any model family.
"""

import hashlib
import json

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

import terrasynth.synthesize as synth_mod
from terrasynth.classes import WORLDCOVER
from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.errors import UserError
from terrasynth.models import generator as genmod


class ColourNoiseGenerator:
    scheme = WORLDCOVER

    def __init__(self, run):
        self.run = run

    def generate(self, masks, generator):
        pal = torch.from_numpy(WORLDCOVER.palette[WORLDCOVER.index_to_code_lut].astype(np.float32) / 255)
        img = pal[masks].permute(0, 3, 1, 2)
        return (img + 0.1 * torch.randn(img.shape, generator=generator)).clamp(0, 1)

    def describe(self):
        return {"family": "colournoise", "run": str(self.run), "checkpoint": "none"}


def load_fake(run, device="cpu"):
    return ColourNoiseGenerator(run)


@pytest.fixture
def fake_family(monkeypatch, tmp_path):
    monkeypatch.setitem(genmod.GENERATOR_FAMILIES, "colournoise", f"{__name__}:load_fake")
    run = tmp_path / "gen"
    run.mkdir()
    (run / "generator.json").write_text(json.dumps({"family": "colournoise"}))
    return run


@pytest.fixture
def labels(tmp_path, rng):
    info = DatasetInfo(name="l", kind="real", scheme=WORLDCOVER, tile_size=8, gsd=10.0, has_images=False,
                       provenance=provenance("t", config_hash="x"))  # fmt: skip
    with DatasetWriter(tmp_path / "labels", info) as w:
        for i in range(7):
            tf = from_origin(500000 + 80 * i, 4000080, 10, 10)
            lab = rng.choice([0, 10, 40, 80], size=(8, 8)).astype(np.uint8)
            w.write(f"t{i}", "test" if i % 3 == 0 else "train", lab, crs="EPSG:32618", transform=tf)
        return w.finalize()


def _digest(ds):
    return {r.id: hashlib.sha256((ds.root / r.image).read_bytes()).hexdigest() for r in ds.records}


def test_synthesize_contract_and_determinism(fake_family, labels, tmp_path):
    a = synth_mod.synthesize(fake_family, labels.root, tmp_path / "a", seed=1, batch_size=3)
    assert a.info.kind == "synthetic" and a.info.provenance["generator"]["family"] == "colournoise"
    assert [r.id for r in a.records] == [r.id for r in labels.records]
    for ra, rl in zip(a.records, labels.records):
        assert ra.split == rl.split and ra.crs == rl.crs and ra.bounds == rl.bounds
        assert (a.read_label(ra) == labels.read_label(rl)).all()
        assert a.read_image(ra).shape == (8, 8, 3)
    b = synth_mod.synthesize(fake_family, labels.root, tmp_path / "b", seed=1, batch_size=3)
    c = synth_mod.synthesize(fake_family, labels.root, tmp_path / "c", seed=2, batch_size=3)
    assert _digest(a) == _digest(b) != _digest(c)


def test_synthesize_resume_equals_uninterrupted(fake_family, labels, tmp_path, monkeypatch):
    full = synth_mod.synthesize(fake_family, labels.root, tmp_path / "full", seed=0, batch_size=2)
    calls = {"n": 0}
    real_write = DatasetWriter.write

    def dying_write(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed mid-run
        return real_write(self, *a, **k)

    monkeypatch.setattr(DatasetWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        synth_mod.synthesize(fake_family, labels.root, tmp_path / "resumed", seed=0, batch_size=2)
    with pytest.raises(UserError, match="unfinished"):
        Dataset.open(tmp_path / "resumed")
    monkeypatch.setattr(DatasetWriter, "write", real_write)
    resumed = synth_mod.synthesize(fake_family, labels.root, tmp_path / "resumed", seed=0, batch_size=2)
    assert _digest(resumed) == _digest(full)


def test_split_filter_and_bad_run(fake_family, labels, tmp_path):
    ds = synth_mod.synthesize(fake_family, labels.root, tmp_path / "s", splits=["test"])
    assert {r.split for r in ds.records} == {"test"} and len(ds) == 3
    with pytest.raises(UserError, match="not a generator run"):
        synth_mod.synthesize(tmp_path, labels.root, tmp_path / "z")


def test_two_processes_shard_without_gaps_or_duplicates(fake_family, labels, tmp_path):
    """Under a 2-process launch (torchrun, as `accelerate launch` starts ranks; gloo on CPU) the
    tiles are split between ranks and the result is byte-identical to one process."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this Python")
    one = synth_mod.synthesize(fake_family, labels.root, tmp_path / "one", seed=1, batch_size=2)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).parent / "synth_worker.py"
    import socket

    with socket.socket() as sock:  # a free port: concurrent test runs must not join each other's ranks
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), str(worker), str(fake_family),
                        str(labels.root), str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    two = Dataset.open(tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two").glob(".journal*")) == []
    assert "rank 1 of 2" in r.stderr  # really two ranks, not two copies of rank 0
    assert _digest(two) == _digest(one) and len(two) == len(labels)


# ---- several images per mask (variants) ------------------------------------------------------------


def _pixels(ds):
    return {r.id: ds.read_image(r) for r in ds.records}


def test_variants_paint_each_mask_k_times_with_other_noise(fake_family, labels, tmp_path):
    one = synth_mod.synthesize(fake_family, labels.root, tmp_path / "one", seed=1, batch_size=3)
    two = synth_mod.synthesize(fake_family, labels.root, tmp_path / "two", seed=1, batch_size=3, variants=2)
    assert sorted(r.id for r in two.records) == sorted(f"{r.id}-v{j}" for r in labels.records for j in (0, 1))
    by_id, img, one_img = {r.id: r for r in two.records}, _pixels(two), _pixels(one)
    for rl in labels.records:
        v0, v1 = by_id[f"{rl.id}-v0"], by_id[f"{rl.id}-v1"]
        for v in (v0, v1):  # each variant keeps its mask's label, split, source and place
            assert (two.read_label(v) == labels.read_label(rl)).all()
            assert (v.split, v.source, v.bounds) == (rl.split, rl.id, rl.bounds)
        assert not np.array_equal(img[v0.id], img[v1.id])  # another draw of the noise
        assert np.array_equal(img[v0.id], one_img[rl.id])  # variant 0 comes from the K=1 run's batches
    assert two.info.provenance["variants"] == 2 and two.info.provenance["tiles_per_variant"] == [7, 7]
    assert "variants" not in one.info.provenance  # K=1: provenance (and config hash) as before the option
    again = synth_mod.synthesize(fake_family, labels.root, tmp_path / "again", seed=1, batch_size=3, variants=2)
    assert _digest(again) == _digest(two)


def test_per_tile_variants_resume_and_bad_counts(fake_family, labels, tmp_path, monkeypatch):
    counts = {r.id: 1 for r in labels.records} | {"t0": 0, "t1": 3}
    full = synth_mod.synthesize(fake_family, labels.root, tmp_path / "full", batch_size=2, variants=counts)
    ids = sorted(r.id for r in full.records)
    assert "t0-v0" not in ids and {"t1-v0", "t1-v1", "t1-v2", "t2-v0"} <= set(ids) and len(ids) == 8
    assert full.info.provenance["variants"]["total"] == 8 and full.info.provenance["tiles_per_variant"] == [6, 1, 1]

    real_write, calls = DatasetWriter.write, {"n": 0}

    def dying_write(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_write(self, *a, **k)

    monkeypatch.setattr(DatasetWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        synth_mod.synthesize(fake_family, labels.root, tmp_path / "resumed", batch_size=2, variants=counts)
    monkeypatch.setattr(DatasetWriter, "write", real_write)
    resumed = synth_mod.synthesize(fake_family, labels.root, tmp_path / "resumed", batch_size=2, variants=counts)
    assert _digest(resumed) == _digest(full)

    for bad, msg in (({k: v for k, v in counts.items() if k != "t3"}, "no count for 1 tile"),
                     (counts | {"zz": 2}, "does not hold"), (counts | {"t2": -1}, "whole numbers >= 0"),
                     (dict.fromkeys(counts, 0), "nothing to paint"), (0, "at least 1")):  # fmt: skip
        with pytest.raises(UserError, match=msg):
            synth_mod.synthesize(fake_family, labels.root, tmp_path / "bad", variants=bad)
    assert not (tmp_path / "bad").exists()
    # Counts for the train tiles only: paint only the train split.
    train = {r.id: 2 for r in labels.split("train")}
    ds = synth_mod.synthesize(fake_family, labels.root, tmp_path / "train", splits=["train"], variants=train)
    assert len(ds) == 2 * len(train)


def test_variants_and_hardness_through_the_cli(fake_family, tmp_path, capsys):
    from conftest import make_dataset, run_cli, untrained_segmenter_run

    from terrasynth.synthesize_filter import hardness_variants, tile_hardness

    real = make_dataset(tmp_path / "real", n=4, scheme=WORLDCOVER, splits=("train",), name="wc")
    run = untrained_segmenter_run(tmp_path / "seg", WORLDCOVER)
    assert run_cli("synthesize", "--generator", fake_family, "--labels", real, "--out", tmp_path / "k2", "--variants", "2") == 0
    assert len(Dataset.open(tmp_path / "k2")) == 8
    assert run_cli("synthesize", "--generator", fake_family, "--labels", real, "--out", tmp_path / "hard",
                   "--variants", "1:3", "--hardness", run) == 0  # fmt: skip
    hard = Dataset.open(tmp_path / "hard")
    per_mask = {r.id: sum(h.id.rsplit("-v", 1)[0] == r.id for h in hard.records) for r in Dataset.open(real).records}
    assert per_mask == hardness_variants(tile_hardness(run, real, None), 1, 3)
    assert sorted(per_mask.values()) == [1, 2, 2, 3]  # ranks 0..3 of 4 -> 1 + round(2 r / 3)
    capsys.readouterr()
    for argv, needle in ((["--variants", "1:3"], "needs --hardness"), (["--variants", "2", "--hardness", run], "a range")):
        rc = run_cli("synthesize", "--generator", fake_family, "--labels", real, "--out", tmp_path / "x", *argv)
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exc:  # argparse's one-line usage error
        run_cli("synthesize", "--generator", fake_family, "--labels", real, "--out", tmp_path / "x", "--variants", "0")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid variants '0'" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
