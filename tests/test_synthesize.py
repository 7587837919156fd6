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
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(worker), str(fake_family),
                        str(labels.root), str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    two = Dataset.open(tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two").glob(".journal*")) == []
    assert _digest(two) == _digest(one) and len(two) == len(labels)
