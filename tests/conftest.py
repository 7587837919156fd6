"""Shared fixtures: paths to the real sample data (skipped when absent) and the one tiny-dataset factory.

``make_dataset`` writes every tiny dataset the tests train or read on, with terrasynth's own
DatasetWriter and a real CRS and transform (UTM 33N, 1 m pixels, tiles side by side), as
torchgeo's ``tests/data/*/data.py`` do. A ``pattern`` picks what the maps look like, so that
each family's test learns something visible in a few steps; the wrappers below name the usual
ones. Test modules import from here (``from conftest import ...``) and from the helper modules,
never from one another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pytest
from hypothesis import settings
import torch
from rasterio.transform import from_origin

from terrasynth.classes import WORLDCOVER, ClassInfo, ClassScheme, load_scheme
from terrasynth.data.dataset import DatasetInfo, DatasetWriter, provenance

# The shared contract's asserts get pytest's rich messages, as a test module's do.
pytest.register_assert_rewrite("model_contract")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TERRASYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests run on 2 cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


# Properties are checked for behaviour, not speed: no per-example deadline (hypothesis' 200 ms
# default failed tests on a loaded CI machine while the property held).
settings.register_profile("terrasynth", deadline=None)
settings.load_profile("terrasynth")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def run_cli(*args: str) -> int:
    from terrasynth.cli import main

    return main([str(a) for a in args])


# ---- the tiny-dataset factory ---------------------------------------------------------------

# Three classes plus nodata: small enough to learn in a few steps, with an ignore code.
TINY_SCHEME = ClassScheme(
    name="tiny",
    nodata=0,
    classes=(
        ClassInfo(1, "water", (0, 0, 255)),
        ClassInfo(2, "forest", (0, 128, 0)),
        ClassInfo(3, "urban", (255, 0, 0)),
    ),
)

Tile = tuple  # (label (H, W) uint8 codes, image (H, W, 3) uint8 or None, source)
Pattern = Literal["blocks", "blobs", "halves", "regions"]


def _blocks(rng: np.random.Generator, i: int, size: int, scheme: ClassScheme) -> Tile:
    """4x4 blocks of random classes, a nodata corner; image colour follows the class, plus noise."""
    codes = np.array(scheme.codes, dtype=np.uint8)
    palette = np.array(scheme.colours, dtype=np.float32)
    blocks = rng.integers(0, len(codes), (4, 4))
    idx = np.kron(blocks, np.ones((size // 4, size // 4), dtype=np.int64))
    label = codes[idx]
    label[:2, :3] = scheme.nodata if scheme.nodata is not None else label[:2, :3]
    img = palette[idx] * 0.7 + rng.normal(0, 20, (size, size, 3))
    return label, np.clip(img, 0, 255).astype(np.uint8), f"scene{i // 2}"


def blob_map(rng: np.random.Generator, size: int, background: int, blobs: list[int]) -> np.ndarray:
    """A map of ``background`` with a few axis-aligned rectangles of the ``blobs`` codes."""
    m = np.full((size, size), background, np.uint8)
    for code in blobs:
        h, w = rng.integers(size // 4, size // 2, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        m[y : y + h, x : x + w] = code
    return m


def _blobs(rng: np.random.Generator, i: int, size: int, scheme: ClassScheme) -> Tile:
    """WorldCover maps of two very different compositions: forest with a town, or built-up with water."""
    m = blob_map(rng, size, 10, [50, 30]) if i % 2 == 0 else blob_map(rng, size, 50, [80, 80])
    return m, None, ""


HALF_COLOURS = {2: (40, 160, 40), 0: (200, 40, 40)}  # dronedeploy vegetation green, building red


def _halves(rng: np.random.Generator, i: int, size: int, scheme: ClassScheme) -> Tile:
    """Vegetation / building halves split at a random row or column; a green / red image."""
    cut = int(rng.integers(4, size - 4))
    lab = np.full((size, size), 2, np.uint8)
    if i % 2:
        lab[:, cut:] = 0
    else:
        lab[cut:, :] = 0
    img = np.zeros((size, size, 3), np.uint8)
    for code, col in HALF_COLOURS.items():
        img[lab == code] = col
    return lab, np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8), "toy"


def _regions(rng: np.random.Generator, i: int, size: int, scheme: ClassScheme) -> Tile:
    """dronedeploy ground (4) with a vegetation (2) region and a nodata (0) corner; palette colours."""
    lab = np.full((size, size), 4, np.uint8)
    lab[rng.integers(0, size // 2) :, : rng.integers(4, size)] = 2
    lab[:6, -8:] = 0
    img = (scheme.palette[lab].astype(float) * 0.7 + rng.normal(0, 10, (size, size, 3)) + 30).clip(0, 255)
    return lab, img.astype(np.uint8), f"src{i % 3}"


PATTERNS: dict[str, Callable[[np.random.Generator, int, int, ClassScheme], Tile]] = {
    "blocks": _blocks,
    "blobs": _blobs,
    "halves": _halves,
    "regions": _regions,
}


def make_dataset(
    root: Path,
    *,
    n: int = 8,
    size: int = 32,
    scheme: ClassScheme = TINY_SCHEME,
    pattern: Pattern = "blocks",
    paired: bool = True,
    splits: tuple[str, ...] | dict[str, int] = ("train", "train", "train", "test"),
    seed: int = 0,
    name: str = "tiny",
    kind: str = "real",
    crs: str = "EPSG:32633",
    gsd: float = 1.0,
) -> Path:
    """Write ``n`` tiles of ``size`` px to ``root`` and finalize the dataset; returns ``root``.

    ``splits``: a tuple is cycled over the tiles; a dict ``{"val": 4}`` puts the last 4 tiles in
    ``val`` and the rest in ``train``. ``paired=False`` drops the images (a label-only dataset).
    Tile ``i`` lies at x = 500000 + 2 i size gsd m in ``crs`` with ``gsd`` m pixels, so tiles never overlap.
    """
    rng = np.random.default_rng(seed)
    tail = [s for s, k in splits.items() for _ in range(k)] if isinstance(splits, dict) else []
    info = DatasetInfo(name=name, kind=kind, scheme=scheme, tile_size=size, gsd=gsd, has_images=paired,
                       provenance=provenance("tests", config_hash=f"{name}-{pattern}-{n}-{size}-{seed}", seed=seed))  # fmt: skip
    with DatasetWriter(root, info) as w:
        for i in range(n):
            label, image, source = PATTERNS[pattern](rng, i, size, scheme)
            if isinstance(splits, dict):
                split = tail[i - (n - len(tail))] if i >= n - len(tail) else "train"
            else:
                split = splits[i % len(splits)]
            w.write(f"t{i:03d}", split, label, image if paired else None, source=source,
                    crs=crs, transform=from_origin(500000 + 2 * i * size * gsd, 4000000, gsd, gsd))  # fmt: skip
        w.finalize()
    return root


def landcover_dataset(root: Path, n: int = 24, size: int = 32, seed: int = 0) -> Path:
    """Label-only WorldCover maps of two compositions, the last 4 in ``val`` (the land-cover tests')."""
    return make_dataset(root, n=n, size=size, scheme=WORLDCOVER, pattern="blobs", paired=False,
                        splits={"val": 4}, seed=seed, name="tiny-landcover", gsd=10.0)  # fmt: skip


def toy_pairs(root: Path, n: int = 16, size: int = 32, seed: int = 0) -> Path:
    """dronedeploy halves whose image is green or red by class, the last 2 in ``test`` (ControlNet's)."""
    return make_dataset(root, n=n, size=size, scheme=load_scheme("dronedeploy"), pattern="halves",
                        splits={"test": 2}, seed=seed, name="toy", kind="procedural")  # fmt: skip


def spade_pairs(root: Path, n: int = 12, size: int = 32) -> Path:
    """dronedeploy regions with palette colours, cycled over train/train/val/test (SPADE's)."""
    return make_dataset(root, n=n, size=size, scheme=load_scheme("dronedeploy"), pattern="regions",
                        splits=("train", "train", "val", "test"), name="tiny")  # fmt: skip


# SPADE CLI overrides for a tiny model (ngf/ndf/hidden 8, 4 px latent) and a 2-step judge.
SPADE_TINY = ["--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "model.hidden=8", "--set", "model.latent_size=4",
              "--set", "select.judge_steps=2", "--set", "select.judge_encoder=resnet18", "--set", "checkpoint_every=2",
              "--set", "batch_size=2", "--set", "log_every=1"]  # fmt: skip


def interrupt_after(m: pytest.MonkeyPatch, family: type, at: int) -> None:
    """Make ``family.after_step`` raise KeyboardInterrupt after step ``at`` (a Ctrl-C mid-run)."""
    after_step = family.after_step

    def interrupt(self, step, logs):
        after_step(self, step, logs)
        if step == at:
            raise KeyboardInterrupt

    m.setattr(family, "after_step", interrupt)


def untrained_segmenter_run(root: Path, scheme: ClassScheme, encoder: str = "tu-mobilenetv3_small_050") -> Path:
    """A segmenter run directory as 'segment train' leaves it (segmenter.json, best.safetensors) with seeded,
    untrained weights: for tests of commands that load a segmenter, not of what it learned."""
    from terrasynth.models.segmentation import build_segmenter, save_weights, segmenter_spec, write_spec

    root.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_segmenter("unet", encoder, 3, scheme.num_classes)
    write_spec(root, segmenter_spec("unet", encoder, 3, scheme.num_classes, scheme))
    save_weights(model, root / "best.safetensors")
    return root
