"""Image realism on hand-made cases: identical copies, colour shifts, flat vs noisy classes, identical variants."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SCHEME, make_dataset, run_cli, untrained_segmenter_run

from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.errors import UserError
from terrasynth.evaluate.image_realism import (
    METRICS,
    ClassStats,
    InceptionFeatures,
    class_stats_table,
    frechet_distance,
    grid_score,
    image_realism,
    interior,
    kernel_distance,
    load_inception,
    nearest_composition,
    pair_tiles,
    power_spectrum,
    variant_distance,
)

Paint = Callable[[np.ndarray, int], np.ndarray]  # (real image, variant) -> synthetic image


def shift(im: np.ndarray, j: int = 0) -> np.ndarray:
    return np.clip(im.astype(int) + [40, -20, 0], 0, 255).astype(np.uint8)


def tiny_noise(im: np.ndarray, j: int = 0) -> np.ndarray:
    noise = np.random.default_rng(1).integers(-1, 2, im.shape)
    return np.clip(im.astype(int) + noise, 0, 255).astype(np.uint8)


def synthetic_copy(real: Dataset, out: Path, paint: Paint, variants: int = 1, split: str | None = None) -> Dataset:
    """A synthetic dataset with ``real``'s ids and labels, as 'synthesize' writes it, images from ``paint``."""
    info = DatasetInfo(name=out.name, kind="synthetic", scheme=real.scheme, tile_size=real.info.tile_size,
                       provenance=provenance("tests", config_hash=out.name))  # fmt: skip
    with DatasetWriter(out, info) as w:
        for j in range(variants):
            for r in real.split(*([split] if split else [])):
                tid = r.id if variants == 1 else f"{r.id}-v{j}"
                w.write(tid, r.split, real.read_label(r), paint(real.read_image(r), j), source=r.source)
        return w.finalize()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, object]:
    """8 real train + 8 real test tiles, an untrained segmenter, and synthetic copies of the test tiles."""
    root = tmp_path_factory.mktemp("realism")
    real = Dataset.open(make_dataset(root / "real", n=16, splits=("train", "test")))
    syn = {name: synthetic_copy(real, root / name, paint, split="test")
           for name, paint in {"same": lambda im, j: im, "noise": tiny_noise, "shift": shift}.items()}  # fmt: skip
    return {"root": root, "real": real, "seg": untrained_segmenter_run(root / "seg", TINY_SCHEME), **syn}


def test_pairs_by_id_and_variant_suffix(world, tmp_path: Path):
    real = world["real"]
    two = synthetic_copy(real, tmp_path / "two", lambda im, j: im, variants=2, split="test")
    pairs = pair_tiles(real, two)
    assert [r.id for r, _ in pairs] == [r.id for r in real.split("test")]
    assert all([s.id for s in v] == [f"{r.id}-v0", f"{r.id}-v1"] for r, v in pairs)
    with pytest.raises(UserError, match="shares an id"):
        pair_tiles(real, Dataset.open(make_dataset(tmp_path / "other", n=4, splits=("test",), name="o")), "train")


def test_other_masks_are_refused(world, tmp_path: Path):
    # Same ids, other labels (another seed): not painted for these masks.
    other = Dataset.open(make_dataset(tmp_path / "other", n=16, splits=("train", "test"), seed=5))
    with pytest.raises(UserError, match="label differs"):
        image_realism(world["real"], other, metrics=("class_stats",))


def test_segmenter_fd_orders_identical_noise_and_shift(world):
    fd = {k: image_realism(world["real"], world[k], segmenter_run=world["seg"], metrics=("segmenter_fd",))["segmenter_fd"]
          for k in ("same", "noise", "shift")}  # fmt: skip
    assert fd["same"]["real_vs_synthetic"] <= 1e-6 * fd["shift"]["real_vs_synthetic"]
    assert fd["noise"]["real_vs_synthetic"] < fd["shift"]["real_vs_synthetic"]
    floor = fd["same"]["floor"]
    assert floor > 0 and fd["same"]["floor_tiles"] == 8 and fd["same"]["floor_split"] == "train"
    assert fd["shift"]["ratio"] == pytest.approx(fd["shift"]["real_vs_synthetic"] / floor)
    assert fd["same"]["features"] == 288  # mobilenetv3_small_050's deepest map


def test_frechet_and_kernel_distance_on_known_features():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 4, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, mean moved by 3 along one axis: FD = 9 up to the sampling of the covariance.
    assert frechet_distance(a, a + torch.tensor([3.0, 0, 0, 0], dtype=torch.float64)) == pytest.approx(9.0, rel=1e-6)
    # KID is unbiased for independent samples (a set against itself is not: its diagonal counts).
    b = torch.randn(200, 4, generator=g, dtype=torch.float64)
    same, near, moved = kernel_distance(a, b), kernel_distance(a, b + 0.3), kernel_distance(a, b + 3.0)
    assert abs(same[0]) < 0.2 * near[0] and 100 * near[0] < moved[0]
    assert kernel_distance(a, b + 3.0) == moved  # seeded subsets


def test_fid_with_random_inception(world, tmp_path: Path):
    # CPU cost: ~0.4 s an image at 299 px, and ~7 s for each 2048-d FID (eigenvalues of a 2048 x 2048 product).
    torch.manual_seed(0)
    net = InceptionFeatures()  # random init, the same architecture as the ImageNet weights
    weights = tmp_path / "inception.pth"
    torch.save(net.net.state_dict(), weights)
    real, k = world["real"], 3
    imgs = np.stack([real.read_image(r) for r, _ in pair_tiles(real, world["shift"])[:k]])  # (k, H, W, 3)
    with torch.inference_mode():
        f = net(torch.from_numpy(imgs).permute(0, 3, 1, 2))  # (k, 2048)
    # The whole path (weights file, loading, pairing, torchmetrics' FID and KID) on the colour-shifted copy ...
    res = image_realism(real, world["shift"], inception_weights=weights, max_tiles=k, metrics=("inception",))
    inc = res["inception"]
    assert res["masks"] == k and inc["kid_subset_size"] == k and inc["weights"] == str(weights)
    assert np.isfinite([inc["kid_mean"], inc["kid_std"]]).all()
    # ... against identical sets, ~0 on that scale.
    assert frechet_distance(f, f) <= 1e-6 * inc["fid"]


def test_inception_weights_missing_or_wrong(world, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache: offline, nothing to find
    with pytest.raises(UserError, match="no Inception v3 weights in .*--inception-weights PATH"):
        load_inception()
    with pytest.raises(UserError, match="--inception-weights PATH"):
        load_inception(tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read Inception weights"):
        load_inception(tmp_path / "text.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not torchvision Inception v3 weights"):
        load_inception(tmp_path / "bad.pth")
    res = image_realism(world["real"], world["same"], metrics=("inception",))
    assert "inception-weights" in res["inception"]["skipped"]  # no weights: skipped, with the reason


def test_interior_excludes_class_edges_and_tile_border():
    idx = np.zeros((6, 6), np.uint8)
    idx[:, 3:] = 1
    idx[0, 0] = 255
    expected = np.zeros((6, 6), bool)
    expected[2:5, 1] = True  # (1, 1) touches the nodata pixel
    expected[1:5, 4] = True
    assert (interior(idx) == expected).all()


def test_class_stats_flat_vs_noise():
    idx = np.zeros((32, 32), np.uint8)
    idx[:, 16:] = 1
    img = np.empty((32, 32, 3), np.uint8)
    img[:, :16] = (10, 20, 30)
    img[:, 16:] = np.random.default_rng(0).integers(0, 256, (32, 16, 3))
    real, half = ClassStats(3), ClassStats(3)
    real.update(img, idx)
    half.update(img // 2, idx)
    flat, noise = real.result(0), real.result(1)
    assert flat == {"mean_rgb": [10.0, 20.0, 30.0], "std_rgb": [0.0, 0.0, 0.0], "laplacian_var": 0.0}
    assert noise["laplacian_var"] > 1e4  # ~20 x the grey variance of uniform noise
    assert real.result(2) is None
    rows = class_stats_table(real, half, TINY_SCHEME)
    assert [r["code"] for r in rows] == [1, 2]
    assert rows[0]["ratio"]["mean_rgb"] == [0.5, 0.5, 0.5] and rows[0]["ratio"]["laplacian_var"] is None  # 0 / 0
    assert rows[1]["ratio"]["laplacian_var"] == pytest.approx(0.25, rel=0.05)


def test_diversity(world, tmp_path: Path):
    real = world["real"]
    assert variant_distance([np.full((4, 4, 3), 7, np.uint8)] * 3) == 0.0
    assert nearest_composition(np.array([[1.0, 0], [0.1, 0.9], [0.9, 0.1]])).tolist() == [2, 2, 0]
    same = synthetic_copy(real, tmp_path / "same2", lambda im, j: im, variants=2, split="test")
    d = image_realism(real, same, metrics=("diversity",))["diversity"]
    assert d["synthetic_variant_distance"] == 0.0 and d["masks"] == 8
    assert d["real_nearest_composition_distance"] > 0.05 and d["ratio"] == 0.0
    apart = synthetic_copy(real, tmp_path / "apart", lambda im, j: shift(im) if j else im, variants=2, split="test")
    assert image_realism(real, apart, metrics=("diversity",))["diversity"]["synthetic_variant_distance"] > 0.02
    one = image_realism(real, world["same"], metrics=("diversity",))["diversity"]
    assert "--variants 2" in one["skipped"]


def test_grid_score_finds_periodic_patterns():
    """Smooth images score about 1 at every period; lines every P pixels stand out at P (and its
    divisors' harmonics), not at 2P."""
    smooth = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                                             size=64, mode="bicubic", align_corners=False)  # fmt: skip
    flat = {p: grid_score(power_spectrum(smooth), p) for p in (2, 4, 8, 16)}
    assert all(0.5 < v < 1.5 for v in flat.values()), flat
    for period in (2, 4, 8):
        lines = (torch.arange(64) % period == 0).float()
        spec = power_spectrum(smooth + 0.03 * (lines[:, None] + lines[None, :]))
        assert grid_score(spec, period) > 5 * flat[period], period
        assert grid_score(spec, 2 * period) < 1.5
    with pytest.raises(ValueError, match="must divide"):
        grid_score(power_spectrum(smooth), 3)


def test_cli(world, tmp_path: Path, capsys):
    from terrasynth.commands import realism

    assert realism.METRICS == METRICS
    out = tmp_path / "r.json"
    assert run_cli("realism", "--real", world["real"].root, "--synthetic", world["shift"].root,
                   "--segmenter", world["seg"], "--out", out) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "segmenter FD" in printed and "FID / KID      skipped" in printed
    res = json.loads(out.read_text())
    assert set(METRICS) <= set(res) and res["masks"] == 8 and res["segmenter_fd"]["real_vs_synthetic"] > 0
    for bad, msg in [
        (["--synthetic", world["root"] / "seg"], "not a usable dataset"),
        (["--synthetic", world["shift"].root, "--split", "val"], "no tiles in split 'val'"),
        (["--synthetic", world["shift"].root, "--out", tmp_path / "r.txt"], "ending in .json"),
        (["--synthetic", world["shift"].root, "--inception-weights", tmp_path / "none.pth"], "file not found"),
        (["--synthetic", world["shift"].root, "--max-tiles", "1"], "at least 2 tiles"),
    ]:
        assert run_cli("realism", "--real", world["real"].root, *bad) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_headline_for_the_report(world):
    """The report's numbers: FD ratio to the floor, per-class Laplacian ratio range, colour shift, diversity."""
    from terrasynth.evaluate.image_realism import headline

    res = image_realism(world["real"], world["shift"], segmenter_run=world["seg"], metrics=("segmenter_fd", "class_stats"))  # fmt: skip
    h = headline(res)
    assert h["segmenter FD / real floor"].startswith(f"{res['segmenter_fd']['ratio']:.2f} (")
    assert h["FID / KID"] == h["diversity, variants / real nearest"] == "skipped: not requested"
    mean_shift = float(h["mean-RGB shift per class (0..255)"].split()[0])
    assert 30 < mean_shift <= np.hypot(40, 20) + 1e-6  # +40 red, -20 green, less where the image clips
    assert " to " in h["Laplacian variance, synthetic / real, per class"]
