"""Import the shared DroneDeploy pairs as a 64 px terrasynth dataset, split by source image.

Used by bench_controlnet.py until ``terrasynth data import-pairs --scheme dronedeploy`` is
on main; same contract (train/val/test by source image, 70/10/20 by a hash of the name).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from terrasynth.classes import load_scheme
from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance


def split_of(name: str) -> str:
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 70 else ("val" if h < 80 else "test")


def import_dronedeploy(src: Path, out: Path, tile: int = 64) -> Dataset:
    if (out / "dataset.json").is_file():
        return Dataset.open(out)
    info = DatasetInfo(name="dronedeploy-64", kind="real", scheme=load_scheme("dronedeploy"), tile_size=tile,
                       provenance=provenance(str(src), config_hash=f"dd-{tile}", seed=0))
    with DatasetWriter(out, info) as w:
        for img_path in sorted((src / "images").glob("*.png")):
            img = np.asarray(Image.open(img_path).convert("RGB"))
            lab = np.asarray(Image.open(src / "masks" / img_path.name))
            split = split_of(img_path.stem)
            for y in range(0, img.shape[0] - tile + 1, tile):
                for x in range(0, img.shape[1] - tile + 1, tile):
                    tid = f"{img_path.stem}_{y:03d}_{x:03d}"
                    if not w.has(tid):
                        w.write(tid, split, lab[y : y + tile, x : x + tile].copy(),
                                img[y : y + tile, x : x + tile].copy(), source=img_path.name)
        return w.finalize()
