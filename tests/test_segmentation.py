"""Segmentation metrics, the mixture sampler and the smp model builder (fast, no training)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from terrasynth.classes import ClassInfo, ClassScheme
from terrasynth.errors import UserError
from terrasynth.evaluate.segmentation import SegmentationMetrics
from terrasynth.data.mixture import MixtureBatchSampler, batch_quotas
from terrasynth.models.segmentation import (
    build_segmenter,
    is_channels_last,
    load_segmenter,
    pad_multiple,
    predict,
    save_weights,
    segmenter_spec,
    write_spec,
)
from conftest import TINY_SCHEME as TINY
from model_contract import ModelContract

ENC = "tu-mobilenetv3_small_050"
FIVE = ClassScheme("five", tuple(ClassInfo(c, f"c{c}", (c, c, c)) for c in range(1, 6)), nodata=0)


# ---- metrics against hand-computed confusion matrices --------------------------------


def test_metrics_hand_computed_with_ignore_and_absent_classes():
    # 4 classes; class 2 is only predicted (never in the target), class 3 appears nowhere.
    target = torch.tensor([[0, 0, 0, 1, 1, 255, 255]])
    preds = torch.tensor([[0, 0, 1, 1, 2, 0, 1]])  # the two ignored pixels must not count
    m = SegmentationMetrics(4)
    m.update(preds, target)
    r = m.compute()
    assert r["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # TP = (2, 1, 0, 0); FP = (0, 1, 1, 0); FN = (1, 1, 0, 0)
    assert r["per_class_iou"][0] == pytest.approx(2 / 3)
    assert r["per_class_iou"][1] == pytest.approx(1 / 3)
    assert r["per_class_iou"][2] == 0.0
    assert r["per_class_iou"][3] is None
    assert r["micro_iou"] == pytest.approx(3 / 7)  # sum TP / sum (TP + FP + FN)
    assert r["macro_miou"] == pytest.approx(0.5)  # mean over classes present in the target: 0 and 1
    assert r["pixel_accuracy"] == pytest.approx(3 / 5)
    assert r["valid_pixels"] == 5


def test_metrics_accumulate_over_batches_like_one_batch():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 8, 8), generator=g)
    target[:, 0] = 255
    preds = torch.randint(0, 3, (4, 8, 8), generator=g)
    whole, parts = SegmentationMetrics(3), SegmentationMetrics(3)
    whole.update(preds, target)
    for i in range(4):
        parts.update(preds[i : i + 1], target[i : i + 1])
    a, b = whole.compute(), parts.compute()
    assert a["confusion"] == b["confusion"]
    conf = torch.tensor(a["confusion"], dtype=torch.float64)
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    assert a["micro_iou"] == pytest.approx(float(tp.sum() / union.sum()))
    assert a["macro_miou"] == pytest.approx(float((tp / union).mean()))
    assert a["pixel_accuracy"] == pytest.approx(float(tp.sum() / conf.sum()))


def test_metrics_perfect_and_all_ignored():
    m = SegmentationMetrics(3)
    t = torch.tensor([[0, 1, 2, 2]])
    m.update(t, t)
    r = m.compute()
    assert r["micro_iou"] == r["macro_miou"] == r["pixel_accuracy"] == 1.0
    m = SegmentationMetrics(3)
    m.update(torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 255))
    r = m.compute()
    assert r["valid_pixels"] == 0 and math.isnan(r["macro_miou"]) and math.isnan(r["micro_iou"])


# ---- mixture sampling ---------------------------------------------------------------


def take(sampler, n):
    out = []
    for b in sampler:
        out.append(b)
        if len(out) == n:
            return out
    return out


def test_mixture_batch_composition_follows_weights_exactly_when_divisible():
    s = MixtureBatchSampler([5, 40], [0.25, 0.75], batch_size=8, seed=1, stop_step=20)
    for batch in s:
        assert Counter(i for i, _, _ in batch) == {0: 2, 1: 6}


@pytest.mark.parametrize("weights", [[0.3, 0.7], [0.1, 0.2, 0.7], [1, 1, 1]])
def test_mixture_cumulative_share_within_one_tile(weights):
    total = sum(weights)
    s = MixtureBatchSampler([7, 11, 13][: len(weights)], weights, batch_size=8, seed=3, stop_step=50)
    seen = Counter()
    for t, batch in enumerate(s, 1):
        assert len(batch) == 8
        seen.update(i for i, _, _ in batch)
        for i, w in enumerate(weights):
            assert abs(seen[i] - w / total * 8 * t) < 1.0 + 1e-9


def test_mixture_epochs_cover_every_tile_and_indices_are_valid():
    s = MixtureBatchSampler([6, 10], [0.5, 0.5], batch_size=4, seed=0, stop_step=6)  # 12 draws from each
    draws = [[j for i, j, _ in b if i == k] for k in (0, 1) for b in [sum(take(s, 6), [])]]
    assert sorted(draws[0][:6]) == list(range(6)) and sorted(draws[0][6:12]) == list(range(6))
    assert sorted(draws[1][:10]) == list(range(10))


def test_mixture_resumed_sampler_continues_the_same_sequence_and_ranks_are_disjoint():
    full = take(MixtureBatchSampler([5, 9], [0.4, 0.6], 6, seed=2, stop_step=12), 12)
    assert take(MixtureBatchSampler([5, 9], [0.4, 0.6], 6, seed=2, start_step=7, stop_step=12), 5) == full[7:]
    r0 = take(MixtureBatchSampler([5, 9], [0.4, 0.6], 6, seed=2, stop_step=6, rank=0, world=2), 6)
    r1 = take(MixtureBatchSampler([5, 9], [0.4, 0.6], 6, seed=2, stop_step=6, rank=1, world=2), 6)
    assert r0 == full[0::2] and r1 == full[1::2]
    other = take(MixtureBatchSampler([5, 9], [0.4, 0.6], 6, seed=3, stop_step=12), 12)
    assert other != full


def test_batch_quotas_tiny_weight_never_negative():
    carry = [0.0, 0.0]
    counts = [0, 0]
    for _ in range(100):
        q = batch_quotas([0.01, 0.99], 4, carry)
        assert min(q) >= 0 and sum(q) == 4
        counts = [a + b for a, b in zip(counts, q)]
    assert counts[0] == 4  # 1% of 400 draws


# ---- models --------------------------------------------------------------------------


class SegmenterContract(ModelContract):
    arch: str
    expected_shape = (2, 5, 32, 32)
    # weights round-trip exactly (the contract checks the state dicts); the loaded model runs in
    # channels_last memory for inference, so its outputs match up to float rounding
    round_trip_atol = 1e-5

    def build(self):
        return build_segmenter(self.arch, ENC, 3, 5)

    def inputs(self):
        return (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)

    def save_load(self, model, path):
        write_spec(path, segmenter_spec(self.arch, ENC, 3, 5, FIVE))
        save_weights(model, path / "best.safetensors")
        return load_segmenter(path, "best")[0]


class TestUnetContract(SegmenterContract):
    arch = "unet"


class TestUnetPlusPlusContract(SegmenterContract):
    arch = "unetplusplus"


class TestDeepLabV3PlusContract(SegmenterContract):
    arch = "deeplabv3plus"


def test_predict_pads_odd_sizes():
    m = build_segmenter("unet", ENC, 3, 4).eval()
    out = predict(m, torch.rand(1, 3, 40, 37))
    assert out.shape == (1, 40, 37) and out.dtype == torch.int64 and int(out.max()) < 4


def test_save_load_round_trip_gives_identical_predictions(tmp_path: Path):
    torch.manual_seed(1)
    m = build_segmenter("deeplabv3plus", ENC, 3, TINY.num_classes).eval()
    write_spec(tmp_path, segmenter_spec("deeplabv3plus", ENC, 3, TINY.num_classes, TINY))
    save_weights(m, tmp_path / "best.safetensors")
    loaded, scheme = load_segmenter(tmp_path, "best")
    assert scheme.codes == TINY.codes
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(m(x), loaded(x), rtol=0, atol=1e-5)  # channels_last inference: float rounding only
    assert (predict(m, x) == predict(loaded, x)).float().mean() > 0.999  # an argmax tie may flip in the last bit


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "deeplabv3plus"])
def test_loaded_segmenter_infers_in_channels_last_with_the_same_predictions(tmp_path: Path, arch: str):
    torch.manual_seed(2)
    m = build_segmenter(arch, ENC, 3, TINY.num_classes).eval()
    write_spec(tmp_path, segmenter_spec(arch, ENC, 3, TINY.num_classes, TINY))
    save_weights(m, tmp_path / "best.safetensors")
    loaded, _ = load_segmenter(tmp_path, "best")
    assert is_channels_last(loaded) and not is_channels_last(m)
    for x in (torch.rand(4, 3, 64, 64), torch.rand(2, 3, 40, 37)):  # padded sizes too
        assert torch.allclose(m(pad_multiple(x)[0]), loaded(pad_multiple(x)[0]), rtol=0, atol=1e-5)
        assert (predict(m, x) == predict(loaded, x)).float().mean() > 0.999  # ties may flip in the last bit
    # saved again from channels_last memory, the weights are the same tensors as before
    save_weights(loaded, tmp_path / "again.safetensors")
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "best.safetensors")), load_file(str(tmp_path / "again.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="no last weights"):
        load_segmenter(tmp_path, "last")
    with pytest.raises(UserError, match="not a segmentation run"):
        load_segmenter(tmp_path / "nope")


def test_local_encoder_weights_are_loaded(tmp_path: Path):
    torch.manual_seed(5)
    src = build_segmenter("unet", ENC, 3, 4)
    save_file({k: v.contiguous() for k, v in src.encoder.state_dict().items()}, str(tmp_path / "enc.safetensors"))
    torch.manual_seed(6)
    dst = build_segmenter("unet", ENC, 3, 4, encoder_weights=tmp_path / "enc.safetensors")
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(v, dst.encoder.state_dict()[k])
    with pytest.raises(UserError, match="not found"):
        build_segmenter("unet", ENC, 3, 4, encoder_weights=tmp_path / "missing.safetensors")
    save_file({"bogus": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match="lack"):
        build_segmenter("unet", ENC, 3, 4, encoder_weights=tmp_path / "bad.safetensors")


def test_unknown_encoder_is_a_user_error():
    with pytest.raises(UserError, match="encoder 'no-such-encoder'"):
        build_segmenter("unet", "no-such-encoder", 3, 4)


def test_evaluation_reads_a_test_split_once_per_process_and_again_when_it_is_rewritten(tmp_path: Path, monkeypatch):
    from conftest import make_dataset, untrained_segmenter_run
    from terrasynth.data.dataset import Dataset
    from terrasynth.evaluate import segmentation as seg

    monkeypatch.setattr(seg, "_EVAL_TILES", {})
    data = make_dataset(tmp_path / "d", n=8, splits=("train", "test"))
    run = untrained_segmenter_run(tmp_path / "run", TINY)
    reads: list[str] = []
    read_image = Dataset.read_image
    monkeypatch.setattr(Dataset, "read_image", lambda self, rec: reads.append(rec.id) or read_image(self, rec))
    first = seg.evaluate_segmentation(run, data, "test")
    assert sorted(reads) == ["t001", "t003", "t005", "t007"]
    second = seg.evaluate_segmentation(run, data, "test")
    assert len(reads) == 4  # the second model (here the same one) reuses the tiles in memory
    assert {k: first[k] for k in ("micro_iou", "macro_miou", "confusion")} == {k: second[k] for k in ("micro_iou", "macro_miou", "confusion")}
    seg.evaluate_segmentation(run, data, "train")
    assert len(reads) == 8  # another split is its own entry
    # a dataset rewritten in place (same path, new index) is read again, with its new pixels
    import shutil

    shutil.rmtree(data)
    make_dataset(data, n=8, splits=("train", "test"), seed=5, pattern="halves")
    third = seg.evaluate_segmentation(run, data, "test")
    assert len(reads) == 12 and third["confusion"] != first["confusion"]
    # over the byte budget nothing is kept: every call reads again
    monkeypatch.setattr(seg, "_EVAL_TILES", {})
    monkeypatch.setattr(seg, "EVAL_CACHE_BYTES", 100)
    seg.evaluate_segmentation(run, data, "test")
    seg.evaluate_segmentation(run, data, "test")
    assert len(reads) == 20 and seg._EVAL_TILES == {}
