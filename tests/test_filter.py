"""FreeMask-style filtering and hardness (terrasynth.synthesize_filter), with a segmenter whose predictions
the test controls: a nearest-colour classifier, so that "this pixel's colour contradicts its label" is
known exactly and the filter's per-class bar can be checked pixel by pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HALF_COLOURS, TINY_SCHEME, make_dataset, run_cli, toy_pairs, untrained_segmenter_run
from rasterio.transform import from_origin

from terrasynth.classes import ClassScheme, load_scheme
from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.errors import UserError
from terrasynth.evaluate.segmentation import evaluate_segmentation
from terrasynth.synthesize_filter import filter_synthetic, hardness_variants, tile_hardness
from terrasynth.train.segmentation import SegmentConfig, same_scheme, train_segmentation

ENC = "tu-mobilenetv3_small_050"


class ColourSegmenter(torch.nn.Module):
    """Logits -|x - colour_c|^2 / T: class c wins where the pixel is nearest its colour."""

    def __init__(self, colours: list[tuple[int, int, int]], temperature: float = 0.05):
        super().__init__()
        self.register_buffer("c", torch.tensor(colours, dtype=torch.float32).div(255).view(1, -1, 3, 1, 1))
        self.t = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, K, H, W)
        return -((x.unsqueeze(1) - self.c) ** 2).sum(2) / self.t


def tiny_colours(scheme: ClassScheme) -> list[tuple[int, int, int]]:
    """The colours make_dataset's "blocks" pattern paints each class with (palette x 0.7)."""
    return [tuple(int(v * 0.7) for v in c) for c in scheme.colours]


def paint(label: np.ndarray, scheme: ClassScheme, colours, rng, noise: float, wrong: np.ndarray | None = None) -> np.ndarray:
    """An image whose pixels take their class's colour, or the next class's where ``wrong``."""
    idx = scheme.to_indices(label).astype(np.int64)
    idx[idx == 255] = 0
    if wrong is not None:
        idx = np.where(wrong, (idx + 1) % scheme.num_classes, idx)
    img = np.array(colours, np.float32)[idx] + rng.normal(0, noise, (*label.shape, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic(root: Path, scheme: ClassScheme, tiles: dict[str, tuple[np.ndarray, np.ndarray]]) -> Dataset:
    info = DatasetInfo(name=root.name, kind="synthetic", scheme=scheme, tile_size=32, gsd=1.0,
                       provenance=provenance("tests", config_hash=root.name, generator={"family": "hand"}))  # fmt: skip
    with DatasetWriter(root, info) as w:
        for i, (tid, (label, image)) in enumerate(tiles.items()):
            w.write(tid, "train", label, image, source=f"mask{i}", crs="EPSG:32633",
                    transform=from_origin(500000 + 64 * i, 4000000, 1, 1))  # fmt: skip
        return w.finalize()


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory) -> Dataset:
    return Dataset.open(make_dataset(tmp_path_factory.mktemp("real") / "real", n=8))


def test_contradicting_pixels_are_ignored_consistent_ones_kept(tiny_real: Dataset, tmp_path: Path):
    rng = np.random.default_rng(1)
    colours = tiny_colours(TINY_SCHEME)
    label = np.kron(rng.integers(1, 4, (4, 4)), np.ones((8, 8), np.int64)).astype(np.uint8)
    label[-2:, :3] = 0  # a nodata corner (bottom left): stays nodata, counts for nothing
    right = np.zeros((32, 32), bool)
    right[:, 16:] = True
    tiles = {
        "good": (label, paint(label, TINY_SCHEME, colours, rng, 5)),
        "bad": (label, paint(label, TINY_SCHEME, colours, rng, 5, wrong=np.ones((32, 32), bool))),
        "half": (label, paint(label, TINY_SCHEME, colours, rng, 5, wrong=right)),
    }
    syn = write_synthetic(tmp_path / "syn", TINY_SCHEME, tiles)
    model = (ColourSegmenter(colours), TINY_SCHEME)
    out = filter_synthetic(tmp_path / "seg", tiny_real, syn, tmp_path / "out", loaded=model)

    assert out.scheme == TINY_SCHEME and out.info.kind == "synthetic" and len(out) == 3
    labelled = label != 0
    by_id = {r.id: r for r in out.records}
    ignored = {t: (out.read_label(by_id[t]) == 0) & labelled for t in tiles}
    assert ignored["good"].sum() <= 0.01 * labelled.sum()
    assert ignored["bad"].sum() >= 0.99 * labelled.sum()
    assert (ignored["half"] == (right & labelled)).all()  # exactly the repainted half
    for t, (lab, img) in tiles.items():
        got = out.read_label(by_id[t])
        assert (got[~ignored[t]] == lab[~ignored[t]]).all()  # what is kept keeps its class
        assert (out.read_image(by_id[t]) == img).all()
        assert by_id[t].source == next(r.source for r in syn.records if r.id == t)

    f = out.info.provenance["filter"]
    assert f["k"] == 1.25 and f["tiles_dropped"] == 0 and f["nodata_added"] is False
    assert set(f["class_mean_loss"]) == {"1", "2", "3"} and all(v > 0 for v in f["class_mean_loss"].values())
    assert f["ignored_pixels"] == sum(int(m.sum()) for m in ignored.values())
    assert f["labelled_pixels"] == 3 * int(labelled.sum())
    assert all(0.3 < s < 0.7 for s in f["ignored_share"].values())  # 1.5 of 3 tiles per class
    assert out.info.provenance["generator"] == {"family": "hand"}
    assert {r.id: r.nodata_pixels for r in out.records}["bad"] >= 0.99 * 32 * 32

    # Whole tiles: "bad" is ~100% ignored, "half" ~50%.
    dropped = filter_synthetic(tmp_path / "seg", tiny_real, syn, tmp_path / "drop", loaded=model, drop_tile_above=0.75)
    assert sorted(r.id for r in dropped.records) == ["good", "half"]
    assert dropped.info.provenance["filter"]["dropped"] == ["bad"]
    # A rerun of the same filter finds its finished dataset; another k is another config.
    again = filter_synthetic(tmp_path / "seg", tiny_real, syn, tmp_path / "out", loaded=model)
    assert again.info.provenance == out.info.provenance
    with pytest.raises(UserError, match="another config"):
        filter_synthetic(tmp_path / "seg", tiny_real, syn, tmp_path / "out", loaded=model, k=2.0)
    with pytest.raises(UserError, match="nothing is left"):
        filter_synthetic(tmp_path / "seg", tiny_real, syn, tmp_path / "none", loaded=model, drop_tile_above=0.0,
                         splits=["train"], k=1e-9)  # fmt: skip
    assert not (tmp_path / "none").exists()  # no half-written output


def test_filter_resumes_to_the_same_dataset(tiny_real: Dataset, tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(2)
    colours = tiny_colours(TINY_SCHEME)
    tiles = {}
    for i in range(5):
        label = np.kron(rng.integers(1, 4, (4, 4)), np.ones((8, 8), np.int64)).astype(np.uint8)
        tiles[f"s{i}"] = (label, paint(label, TINY_SCHEME, colours, rng, 5, wrong=rng.random((32, 32)) < 0.2 * i))
    syn = write_synthetic(tmp_path / "syn", TINY_SCHEME, tiles)
    model = (ColourSegmenter(colours), TINY_SCHEME)
    full = filter_synthetic(tmp_path / "seg", tiny_real, syn, tmp_path / "full", loaded=model, batch_size=2,
                            drop_tile_above=0.5)  # fmt: skip
    real_write, calls = DatasetWriter.write, {"n": 0}

    def dying_write(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(self, *a, **k)

    monkeypatch.setattr(DatasetWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        filter_synthetic(tmp_path / "seg", tiny_real, syn, tmp_path / "resumed", loaded=model, batch_size=2, drop_tile_above=0.5)
    monkeypatch.setattr(DatasetWriter, "write", real_write)
    resumed = filter_synthetic(tmp_path / "seg", tiny_real, syn, tmp_path / "resumed", loaded=model, batch_size=2,
                               drop_tile_above=0.5)  # fmt: skip
    assert (tmp_path / "full" / "index.csv").read_text() == (tmp_path / "resumed" / "index.csv").read_text()
    strip = lambda p: {k: v for k, v in p.items() if k != "command"}
    assert strip(resumed.info.provenance) == strip(full.info.provenance)
    assert 0 < full.info.provenance["filter"]["tiles_dropped"] < 5


def test_scheme_without_nodata_gets_255_and_mixes_with_real_in_training(tmp_path: Path):
    dd = load_scheme("dronedeploy")
    assert dd.nodata is None
    real = Dataset.open(toy_pairs(tmp_path / "real", n=8))
    colours = [HALF_COLOURS.get(c, col) for c, col in zip(dd.codes, dd.colours)]
    # Synthetic: the real tiles, the first two with vegetation and building colours swapped.
    tiles = {}
    for i, r in enumerate(real.records):
        lab, img = real.read_label(r), real.read_image(r)
        if i < 2:
            img = img.copy()
            img[lab == 2], img[lab == 0] = HALF_COLOURS[0], HALF_COLOURS[2]
        tiles[r.id] = (lab, img)
    syn = write_synthetic(tmp_path / "syn", dd, tiles)
    out = filter_synthetic(tmp_path / "seg", real, syn, tmp_path / "filtered", loaded=(ColourSegmenter(colours), dd))
    assert out.scheme.nodata == 255 and out.scheme.codes == dd.codes and out.info.provenance["filter"]["nodata_added"]
    assert [r.nodata_pixels > 1000 for r in out.records] == [True, True] + [False] * 6
    assert same_scheme(real.scheme, out.scheme) and same_scheme(out.scheme, real.scheme)
    assert Dataset.open(out.root).verify() == []

    cfg = SegmentConfig(arch="unet", encoder=ENC, batch_size=4, max_steps=2, val_every=2, checkpoint_every=2,
                        mixed_precision="no")  # fmt: skip
    run = train_segmentation(cfg, [(real.root, 1.0), (out.root, 1.0)], tmp_path / "mix")
    info = json.loads((run / "run.json").read_text())
    assert [d["kind"] for d in info["data"]] == [real.info.kind, "synthetic"] and (run / "last.safetensors").is_file()
    # The run's scheme is the real one (nodata None); it evaluates on the filtered data, ignoring its 255s.
    res = evaluate_segmentation(run, out.root, "all", which="last")
    assert res["valid_pixels"] == 8 * 32 * 32 - sum(r.nodata_pixels for r in out.records)


def test_tile_hardness_ranks_and_variants(tmp_path: Path):
    rng = np.random.default_rng(3)
    colours = tiny_colours(TINY_SCHEME)
    label = np.kron(rng.integers(1, 4, (4, 4)), np.ones((8, 8), np.int64)).astype(np.uint8)
    # Tile h<i> has i quarters of its rows painted with another class's colour: harder and harder.
    rows = lambda i: np.broadcast_to(np.arange(32)[:, None] < 8 * i, (32, 32))
    tiles = {f"h{i}": (label, paint(label, TINY_SCHEME, colours, rng, 5, wrong=rows(i))) for i in (2, 0, 3, 1)}
    real = write_synthetic(tmp_path / "real", TINY_SCHEME, tiles)
    h = tile_hardness(tmp_path / "seg", real, "train", loaded=(ColourSegmenter(colours), TINY_SCHEME))
    assert sorted(h, key=h.get) == ["h0", "h1", "h2", "h3"]
    assert hardness_variants(h, 1, 4) == {"h0": 1, "h1": 2, "h2": 3, "h3": 4}
    assert hardness_variants(h, 2, 2) == dict.fromkeys(h, 2)
    assert hardness_variants({"only": 0.3}, 1, 5) == {"only": 5}
    # Ties share a count; counts never fall as hardness rises; the result does not depend on order.
    tied = hardness_variants({"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.5}, 0, 6)
    assert tied["a"] == tied["b"] and tied["d"] == 0 and tied["c"] == 6
    values = rng.gamma(2.0, size=50)
    hv = {f"t{i}": float(v) for i, v in enumerate(values)}
    k = hardness_variants(hv, 1, 8)
    order = sorted(hv, key=hv.get)
    assert [k[t] for t in order] == sorted(k[t] for t in order) and k[order[0]] == 1 and k[order[-1]] == 8
    assert hardness_variants(dict(reversed(list(hv.items()))), 1, 8) == k
    for bad in ((3, 1), (-1, 2), (1, 2.5)):
        with pytest.raises(UserError):
            hardness_variants(hv, *bad)
    with pytest.raises(UserError, match="finite"):
        hardness_variants({"a": float("nan")}, 1, 2)


def test_filter_cli_and_bad_input(tiny_real: Dataset, tmp_path: Path, capsys):
    run = untrained_segmenter_run(tmp_path / "seg", TINY_SCHEME)
    syn = make_dataset(tmp_path / "syn", n=4, kind="synthetic", seed=5, name="syn")
    out = tmp_path / "filtered"
    assert run_cli("filter", "--segmenter", run, "--real", tiny_real.root, "--synthetic", syn, "--out", out, "--k", "2") == 0
    assert "labelled pixels ignored" in capsys.readouterr().out
    ds = Dataset.open(out)
    assert len(ds) == 4 and ds.info.provenance["filter"]["k"] == 2.0 and ds.info.provenance["filter"]["segmenter"] == str(run.resolve())
    base = {"--segmenter": run, "--real": tiny_real.root, "--synthetic": syn, "--out": tmp_path / "o2"}
    for change, needle in (
        ({"--k": "0"}, "--k 0"),
        ({"--drop-tile-above": "1.5"}, "--drop-tile-above 1.5"),
        ({"--out": syn}, "the input --synthetic"),
        ({"--synthetic": tmp_path / "nope"}, "not found"),
    ):
        rc = run_cli("filter", *[x for kv in {**base, **change}.items() for x in kv])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o2").exists()
    other = ClassScheme("two", TINY_SCHEME.classes[:2], nodata=0)
    with pytest.raises(UserError, match="differ from the segmenter"):
        filter_synthetic(run, tiny_real, syn, tmp_path / "o3", loaded=(ColourSegmenter(other.colours), other))
