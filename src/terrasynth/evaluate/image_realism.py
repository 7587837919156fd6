"""Realism of synthetic images against real ones painted for the same masks (issue #16).

Every metric compares a dataset's real tiles of one split (``test`` by default) with the
synthetic tiles that ``terrasynth synthesize`` painted for the *same* masks: a synthetic
dataset keeps the real tile ids (variants add ``-v<j>``), so tiles pair by id and their labels
must be equal. Class composition is therefore identical on both sides and every difference
measured is one of the images.

- **Segmenter FD** (always offline): Fréchet distance between the global-average-pooled deepest
  encoder features of a segmenter trained on the real data, real vs synthetic, next to the
  *floor* real-train vs real-test (test vs train when ``split`` is train) with as many tiles a
  side (two real samples of one distribution; their masks differ, so the floor also holds the
  train/test shift), and the ratio.
- **FID and KID** (torchmetrics) on 2048-d pool features of torchvision's Inception v3, when its
  weights are at hand (a local file; nothing is downloaded). These are *not* the TF-Inception
  FID of papers (torch-fidelity's network is not installed): compare values within this tool only.
- **Per-class colour and texture**: per class of the mask, mean and std of R, G, B (0..255) and
  the variance of the 4-neighbour Laplacian of the grey image over the class's *interior* pixels
  (all 8 neighbours of the same class), so class edges do not count as texture; with the
  synthetic / real ratio of each.
- **Diversity**: mean absolute pixel difference (0..1) between the variants of one mask, against
  the same distance between a real tile and the real tile of the nearest class composition.
- **Grid artefacts**: per period P (2, 4, 8, 16 px), the power at the frequencies a period-P
  lattice adds over the power of their neighbouring frequencies (:func:`grid_score`), real and
  synthetic: about 1 for a smooth spectrum, well above 1 for a visible grid.

All Fréchet distances go through torchmetrics' :class:`FrechetInceptionDistance` (its ``feature``
argument takes a module; a pass-through one feeds it features computed once here). Land-cover
*map* realism lives in :mod:`terrasynth.evaluate.realism`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from terrasynth.classes import ClassScheme
from terrasynth.data.dataset import Dataset, TileRecord
from terrasynth.errors import UserError

Metric = Literal["segmenter_fd", "inception", "class_stats", "diversity", "grid"]
METRICS: tuple[Metric, ...] = ("segmenter_fd", "inception", "class_stats", "diversity", "grid")
GRID_PERIODS = (2, 4, 8, 16)
INCEPTION_SIZE = 299
GREY = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma
_VARIANT = re.compile(r"^(.*)-v(\d+)$")


# ---- pairing ------------------------------------------------------------------------------


def pair_tiles(real: Dataset, synthetic: Dataset, split: str = "test") -> list[tuple[TileRecord, list[TileRecord]]]:
    """Each real tile of ``split`` with the synthetic tiles painted for its mask (variant order).

    A synthetic tile pairs with the real tile of its own id, else of its id before ``-v<j>``.
    Real tiles without a synthetic one are left out; no pair at all is a one-line error.
    """
    for ds in (real, synthetic):
        if not ds.info.has_images:
            raise UserError(f"{ds.root}: a label-only dataset has no images to compare; pass a paired dataset")
    if real.scheme.codes != synthetic.scheme.codes:
        raise UserError(f"{synthetic.root}: class codes {synthetic.scheme.codes} differ from {real.root}'s "
                        f"{real.scheme.codes}; pass the synthetic dataset painted from these labels")  # fmt: skip
    reals = {r.id: r for r in real.split(split)}
    if not reals:
        splits = sorted({r.split for r in real.records})
        raise UserError(f"{real.root}: no tiles in split {split!r}; available: {splits}")
    found: dict[str, list[tuple[int, TileRecord]]] = {}
    for s in synthetic.split(split):
        m = _VARIANT.match(s.id)
        if s.id in reals:
            found.setdefault(s.id, []).append((0, s))
        elif m and m.group(1) in reals:
            found.setdefault(m.group(1), []).append((int(m.group(2)), s))
    if not found:
        raise UserError(f"{synthetic.root}: none of its {split!r} tiles shares an id with {real.root}'s; pass the "
                        "synthetic dataset that 'terrasynth synthesize --labels' made from the real one")  # fmt: skip
    return [(reals[i], [s for _, s in sorted(found[i], key=lambda js: js[0])]) for i in reals if i in found]


def spread(n_total: int, n: int | None) -> np.ndarray:
    """``n`` indices evenly spread over ``range(n_total)`` (all when ``n`` is None or larger)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


# ---- feature extractors -------------------------------------------------------------------


class SegmenterFeatures(torch.nn.Module):
    """Images (B, 3, H, W) float in [0, 1] -> (B, C): a segmenter's deepest encoder map, averaged over space."""

    def __init__(self, segmenter: torch.nn.Module):
        super().__init__()
        self.encoder = segmenter.encoder
        self.num_features = int(segmenter.encoder.out_channels[-1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from terrasynth.models.segmentation import is_channels_last, pad_multiple

        x, _ = pad_multiple(images)  # reflect padding, as at prediction
        if is_channels_last(self.encoder):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x)[-1].mean(dim=(2, 3)).contiguous()


class InceptionFeatures(torch.nn.Module):
    """Images (B, 3, H, W) uint8 -> (B, 2048) pool features of torchvision's Inception v3.

    Images are scaled to [-1, 1] (what the ImageNet weights expect, torchvision's
    ``transform_input`` undone) and resized bilinearly to 299 x 299. Without a state dict the
    network keeps PyTorch's default random initialisation (tests, benchmarks).
    """

    num_features = 2048

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None):
        super().__init__()
        from torchvision.models import inception_v3

        # With weights to load, build on the meta device: initialising 22M parameters first costs seconds.
        with torch.device("meta" if state_dict is not None else "cpu"):
            self.net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        self.net.fc = torch.nn.Identity()
        if state_dict is not None:
            # The ImageNet file also holds the auxiliary head and the classifier: neither is used.
            keep = {k: v for k, v in state_dict.items() if not k.startswith(("AuxLogits.", "fc."))}
            self.net.load_state_dict(keep, assign=True)  # strict: any other mismatch is the caller's to report
        # channels_last runs Inception about twice as fast on a CPU.
        self.net.eval().requires_grad_(False).to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # batch norm stays in inference mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        x = torch.nn.functional.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                                            align_corners=False, antialias=x.shape[-1] > INCEPTION_SIZE)  # fmt: skip
        return self.net(x.contiguous(memory_format=torch.channels_last))


def inception_cache_file() -> Path:
    """Where torchvision keeps its ImageNet Inception v3 weights once downloaded (``TORCH_HOME``)."""
    from torchvision.models import Inception_V3_Weights

    url = Inception_V3_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_inception(weights: str | Path | None = None) -> InceptionFeatures:
    """Inception v3 features with the weights in ``weights`` (a torchvision state dict, ``.pth`` or
    ``.safetensors``), or in torchvision's cache when None. Nothing is downloaded: no weights is a
    one-line error that says where to get the file and how to pass it."""
    from torchvision.models import Inception_V3_Weights

    path = Path(weights) if weights is not None else inception_cache_file()
    if not path.is_file():
        where = f"{path}: file not found" if weights is not None else f"no Inception v3 weights in {path.parent}"
        raise UserError(f"{where}; FID/KID need torchvision's ImageNet Inception v3 state dict (nothing is downloaded "
                        f"here): fetch {Inception_V3_Weights.IMAGENET1K_V1.url} where there is internet and pass it "
                        "with --inception-weights PATH")  # fmt: skip
    try:
        if path.suffix == ".safetensors":
            from terrasynth.io import load_weights

            state = load_weights(path, "pass torchvision's Inception v3 state dict")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot read Inception weights ({exc.__class__.__name__}); pass a state dict "
                        "file (torch.save or .safetensors)") from exc  # fmt: skip
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict; pass Inception v3 weights")
    try:
        return InceptionFeatures(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)[:160]
        raise UserError(f"{path}: not torchvision Inception v3 weights ({first[:160]}); pass "
                        "inception_v3_google-0cc3c7bd.pth or a state dict of the same network") from exc  # fmt: skip


# ---- distances (torchmetrics) -------------------------------------------------------------


class _Given(torch.nn.Module):
    """torchmetrics' ``feature`` extractor for features already computed: returns them (float64)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features ``a`` (N, D) and ``b`` (M, D), N, M >= 2.

    torchmetrics' FID on the given features: the one Fréchet implementation of this module.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples a side, got {len(a)} and {len(b)}")
    fid = FrechetInceptionDistance(feature=_Given(a.shape[1]))
    fid.update(a.cpu(), real=True)
    fid.update(b.cpu(), real=False)
    return max(0.0, float(fid.compute()))  # a squared distance: below 0 only by round-off


def kernel_distance(a: torch.Tensor, b: torch.Tensor, *, subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """torchmetrics' KID (mean, std over ``subsets`` random subsets of min(1000, N, M)) of features
    ``a`` (N, D) vs ``b`` (M, D); the subsets are drawn from ``seed`` (the global RNG is left alone)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_Given(a.shape[1]), subsets=subsets,
                                      subset_size=min(1000, len(a), len(b)))  # fmt: skip
    kid.update(a.cpu(), real=True)
    kid.update(b.cpu(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


# ---- per-class colour and texture ---------------------------------------------------------


def interior(idx: np.ndarray) -> np.ndarray:
    """(H, W) bool: labelled pixels whose 8 neighbours all hold the same class (tile border excluded)."""
    p = np.pad(idx.astype(np.int16), 1, constant_values=-1)
    h, w = idx.shape
    out = idx != 255
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                out &= p[dy : dy + h, dx : dx + w] == idx
    return out


class ClassStats:
    """Running per-class sums of RGB and of the grey Laplacian, pooled over every tile given."""

    def __init__(self, num_classes: int):
        k = num_classes
        self.k = k
        self.n = np.zeros(k)
        self.rgb = np.zeros((k, 3))
        self.rgb2 = np.zeros((k, 3))
        self.n_in = np.zeros(k)
        self.lap = np.zeros(k)
        self.lap2 = np.zeros(k)

    def update(self, image: np.ndarray, idx: np.ndarray) -> None:
        """``image`` (H, W, 3) uint8, ``idx`` (H, W) training indices (255 = nodata, ignored)."""
        lab = idx != 255
        cls = idx[lab].astype(np.int64)
        px = image[lab].astype(np.float64)
        self.n += np.bincount(cls, minlength=self.k)[: self.k]
        for c in range(3):
            self.rgb[:, c] += np.bincount(cls, px[:, c], minlength=self.k)[: self.k]
            self.rgb2[:, c] += np.bincount(cls, px[:, c] ** 2, minlength=self.k)[: self.k]
        lap = ndimage.laplace(image.astype(np.float64) @ GREY)  # 4-neighbour; border pixels are not interior
        inner = interior(idx)
        cls, v = idx[inner].astype(np.int64), lap[inner]
        self.n_in += np.bincount(cls, minlength=self.k)[: self.k]
        self.lap += np.bincount(cls, v, minlength=self.k)[: self.k]
        self.lap2 += np.bincount(cls, v**2, minlength=self.k)[: self.k]

    def result(self, c: int) -> dict[str, Any] | None:
        """Mean and std of R, G, B (0..255) and the Laplacian variance of class ``c``; None when absent."""
        if not self.n[c]:
            return None
        mean = self.rgb[c] / self.n[c]
        std = np.sqrt(np.maximum(self.rgb2[c] / self.n[c] - mean**2, 0.0))
        lap_var = None
        if self.n_in[c] >= 2:
            m = self.lap[c] / self.n_in[c]
            lap_var = float(max(self.lap2[c] / self.n_in[c] - m**2, 0.0))
        return {"mean_rgb": mean.round(4).tolist(), "std_rgb": std.round(4).tolist(), "laplacian_var": lap_var}


def _ratio(s: object, r: object) -> object:
    if isinstance(s, list):
        return [_ratio(a, b) for a, b in zip(s, r)]
    return None if s is None or r is None or r == 0 else round(float(s) / float(r), 6)


def class_stats_table(real: ClassStats, synthetic: ClassStats, scheme: ClassScheme) -> list[dict[str, Any]]:
    """One row per class present in the masks: real and synthetic statistics and synthetic / real ratios."""
    rows = []
    for c, info in enumerate(scheme.classes):
        r, s = real.result(c), synthetic.result(c)
        if r is None or s is None:
            continue
        rows.append({"code": info.code, "name": info.name, "pixels": int(real.n[c]), "interior_pixels": int(real.n_in[c]),
                     "real": r, "synthetic": s, "ratio": {k: _ratio(s[k], r[k]) for k in r}})  # fmt: skip
    return rows


# ---- diversity ----------------------------------------------------------------------------


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two (H, W, 3) uint8 images, in [0, 1]."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() / 255.0)


def variant_distance(images: Sequence[np.ndarray]) -> float:
    """Mean :func:`pixel_distance` over every pair of variants of one mask (>= 2 images)."""
    d = [pixel_distance(images[i], images[j]) for i in range(len(images)) for j in range(i + 1, len(images))]
    return float(np.mean(d))


def nearest_composition(shares: np.ndarray) -> np.ndarray:
    """(N,) for each row of ``shares`` (N, K), the other row with the least L1 distance (first on ties)."""
    d = np.abs(shares[:, None, :] - shares[None, :, :]).sum(-1)
    np.fill_diagonal(d, np.inf)
    return d.argmin(1)


# ---- grid artefacts -----------------------------------------------------------------------


def power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images -> (H, W) summed power spectrum of their grey, mean-removed versions."""
    x = images.float().mean(1)
    return torch.fft.fft2(x - x.mean((-2, -1), keepdim=True)).abs().pow(2).sum(0)


def grid_score(spectrum: torch.Tensor, period: int) -> float:
    """How much a period-``period`` lattice stands out of a (H, W) :func:`power_spectrum`.

    A pattern repeating every P pixels (lines, blocks, checkerboards) puts its power at the
    multiples of (H/P, W/P); the bins it shares with the P/2 lattice are left to that period. The
    score is the power at those bins over the mean power of their 8 neighbouring bins: about 1
    for a smooth spectrum (real DroneDeploy tiles: 1.0-1.6), far above 1 for a grid.
    """
    h, w = spectrum.shape
    if h % period or w % period or period < 2 or period > min(h, w) // 2:
        raise ValueError(f"period {period} must divide the image size {h}x{w} and be in 2..{min(h, w) // 2}")
    near = sum(spectrum.roll((du, dv), (0, 1)) for du in (-1, 0, 1) for dv in (-1, 0, 1) if du or dv) / 8
    peak = torch.zeros(h, w, dtype=torch.bool)
    peak[:: h // period, :: w // period] = True
    if period > 2:
        peak[:: 2 * h // period, :: 2 * w // period] = False
    peak[0, 0] = False
    return float(spectrum[peak].sum() / near[peak].sum().clamp(min=1e-12))


# ---- the driver ---------------------------------------------------------------------------


def _images(ds: Dataset, recs: Sequence[TileRecord]) -> np.ndarray:
    return np.stack([ds.read_image(r) for r in recs])  # (B, H, W, 3) uint8


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def image_realism(
    real_ds: str | Path | Dataset,
    synthetic_ds: str | Path | Dataset,
    *,
    segmenter_run: str | Path | None = None,
    split: str = "test",
    max_tiles: int | None = 1000,
    inception_weights: str | Path | None = None,
    metrics: Sequence[Metric] = METRICS,
    checkpoint: Literal["best", "last"] = "best",
    batch_size: int = 16,
    device: str | None = None,
) -> dict[str, Any]:
    """Image realism of ``synthetic_ds`` against ``real_ds`` on the masks they share in ``split``.

    ``max_tiles`` masks at most, spread evenly over the index; with variants, ``-v0`` (the first)
    stands for its mask in the FDs and class statistics. ``segmenter_run``: a 'segment train' run on
    the real data (its FD is skipped, with the reason recorded, without one). ``inception_weights``:
    see :func:`load_inception`; without a file FID/KID are skipped with the reason recorded, while a
    given file that is missing or wrong is an error. ``metrics`` picks a subset of :data:`METRICS`.
    """
    bad = sorted(set(metrics) - set(METRICS))
    if bad:
        raise UserError(f"metric {bad[0]!r} is not known; choose from {list(METRICS)}")
    if max_tiles is not None and max_tiles < 2:
        raise UserError(f"max_tiles {max_tiles}: distances need at least 2 tiles a side; give 2 or more")
    if batch_size < 1:
        raise UserError(f"batch_size {batch_size}: must be at least 1")
    real = real_ds if isinstance(real_ds, Dataset) else Dataset.open(real_ds)
    syn = synthetic_ds if isinstance(synthetic_ds, Dataset) else Dataset.open(synthetic_ds)
    pairs = pair_tiles(real, syn, split)
    pairs = [pairs[i] for i in spread(len(pairs), max_tiles)]
    n = len(pairs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    counts = [len(v) for _, v in pairs]
    out: dict[str, Any] = {
        "real": str(real.root), "synthetic": str(syn.root), "split": split, "masks": n,
        "variants_per_mask": {"min": min(counts), "max": max(counts)},
    }  # fmt: skip

    seg = inc = None
    if "segmenter_fd" in metrics:
        if segmenter_run is None:
            out["segmenter_fd"] = {"skipped": "no segmenter run given (pass one trained on the real data)"}
        elif n < 2:
            out["segmenter_fd"] = {"skipped": f"{n} mask(s) in split {split!r}; a Fréchet distance needs 2 or more"}
        else:
            from terrasynth.models.segmentation import load_segmenter

            seg = SegmenterFeatures(load_segmenter(segmenter_run, checkpoint)[0]).to(device)
    else:
        out["segmenter_fd"] = {"skipped": "not requested"}
    if "inception" in metrics:
        if inception_weights is None and not inception_cache_file().is_file():
            out["inception"] = {"skipped": f"no Inception v3 weights (none in {inception_cache_file().parent}; nothing "
                                           "is downloaded): pass inception_weights=PATH / --inception-weights PATH"}  # fmt: skip
        elif n < 2:
            out["inception"] = {"skipped": f"{n} mask(s) in split {split!r}; FID needs 2 or more"}
        else:
            inc = load_inception(inception_weights).to(device)
    else:
        out["inception"] = {"skipped": "not requested"}

    scheme = real.scheme
    stats = (ClassStats(scheme.num_classes), ClassStats(scheme.num_classes)) if "class_stats" in metrics else None
    feats: dict[str, list[torch.Tensor]] = {"seg_real": [], "seg_syn": [], "inc_real": [], "inc_syn": []}
    shares = np.zeros((n, scheme.num_classes))
    spectra = {"real": 0.0, "synthetic": 0.0}
    with torch.inference_mode():
        for b0, batch in zip(range(0, n, batch_size), _batches(pairs, batch_size)):
            labels = [real.read_label(r) for r, _ in batch]
            for (r, v), lab in zip(batch, labels):
                if not np.array_equal(syn.read_label(v[0]), lab):
                    raise UserError(f"{syn.root}: tile {v[0].id}'s label differs from {real.root}'s tile {r.id}; the "
                                    "images were not painted for the same masks: pass the dataset synthesized from "
                                    f"{real.root}")  # fmt: skip
            idx = [scheme.to_indices(lab) for lab in labels]
            for i, m in enumerate(idx, start=b0):
                c = np.bincount(m[m != 255], minlength=scheme.num_classes)[: scheme.num_classes].astype(np.float64)
                shares[i] = c / max(c.sum(), 1.0)
            ri, si = _images(real, [r for r, _ in batch]), _images(syn, [v[0] for _, v in batch])
            if stats is not None:
                for a, b, m in zip(ri, si, idx):
                    stats[0].update(a, m)
                    stats[1].update(b, m)
            rt, st = (torch.from_numpy(x).permute(0, 3, 1, 2).to(device) for x in (ri, si))  # (B, 3, H, W) uint8
            if "grid" in metrics:
                spectra = {"real": spectra["real"] + power_spectrum(rt).cpu(),
                           "synthetic": spectra["synthetic"] + power_spectrum(st).cpu()}  # fmt: skip
            if seg is not None:
                feats["seg_real"].append(seg(rt.float() / 255).cpu())
                feats["seg_syn"].append(seg(st.float() / 255).cpu())
            if inc is not None:
                feats["inc_real"].append(inc(rt).cpu())
                feats["inc_syn"].append(inc(st).cpu())

    if seg is not None:
        a, b = torch.cat(feats["seg_real"]), torch.cat(feats["seg_syn"])
        res: dict[str, Any] = {"segmenter": str(segmenter_run), "checkpoint": checkpoint,
                                  "features": seg.num_features, "real_vs_synthetic": frechet_distance(a, b)}  # fmt: skip
        # The floor: as many real tiles of another split (train, or test when ``split`` is train) as there are
        # masks, so that both FDs carry the same small-sample bias.
        other = "train" if split != "train" else "test"
        recs = real.split(other)
        picked = [recs[i] for i in spread(len(recs), n)]
        if len(picked) >= 2:
            with torch.inference_mode():
                t = torch.cat([seg(torch.from_numpy(_images(real, rs)).permute(0, 3, 1, 2).to(device).float() / 255).cpu()
                               for rs in _batches(picked, batch_size)])  # fmt: skip
            floor = frechet_distance(t, a)
            ratio = res["real_vs_synthetic"] / floor if floor > 0 else None
            res.update(floor=floor, floor_split=other, floor_tiles=len(picked), ratio=ratio)
        else:
            res["floor_skipped"] = f"{len(recs)} real {other} tile(s); the floor needs 2 or more"
        out["segmenter_fd"] = res
    if inc is not None:
        a, b = torch.cat(feats["inc_real"]), torch.cat(feats["inc_syn"])
        kid_mean, kid_std = kernel_distance(a, b)
        out["inception"] = {"weights": str(inception_weights or inception_cache_file()), "features": 2048,
                            "fid": frechet_distance(a, b), "kid_mean": kid_mean, "kid_std": kid_std,
                            "kid_subset_size": min(1000, n),
                            "note": "torchvision Inception v3 features; not comparable to TF-Inception FIDs"}  # fmt: skip
    out["class_stats"] = class_stats_table(*stats, scheme) if stats is not None else {"skipped": "not requested"}
    out["diversity"] = _diversity(real, syn, pairs, shares) if "diversity" in metrics else {"skipped": "not requested"}
    out["grid"] = {"skipped": "not requested"}
    if "grid" in metrics:
        size = min(spectra["real"].shape)
        out["grid"] = {str(p): {k: grid_score(v, p) for k, v in spectra.items()} for p in GRID_PERIODS
                       if size % p == 0 and p <= size // 2}  # fmt: skip
    return out


def _diversity(real: Dataset, syn: Dataset, pairs: list[tuple[TileRecord, list[TileRecord]]],
               shares: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """Variant-to-variant distance of the masks with >= 2 variants against nearest-composition real pairs."""
    multi = [i for i, (_, v) in enumerate(pairs) if len(v) >= 2]
    if not multi:
        return {"skipped": "one synthetic image per mask; synthesize with --variants 2 or more"}
    syn_d = [variant_distance(list(_images(syn, pairs[i][1]))) for i in multi]
    res: dict[str, Any] = {"masks": len(multi), "synthetic_variant_distance": float(np.mean(syn_d))}
    if len(pairs) < 2:
        res["reference_skipped"] = "one real tile; the reference needs a second of similar composition"
        return res
    near = nearest_composition(shares)
    ref_d = [pixel_distance(real.read_image(pairs[i][0]), real.read_image(pairs[near[i]][0])) for i in multi]
    ref = float(np.mean(ref_d))
    res.update(real_nearest_composition_distance=ref, ratio=res["synthetic_variant_distance"] / ref if ref > 0 else None,
               mean_composition_l1=float(np.mean([np.abs(shares[i] - shares[near[i]]).sum() for i in multi])))  # fmt: skip
    return res


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few human-readable lines of an :func:`image_realism` result (the JSON holds everything)."""
    lines = [f"{result['masks']} masks of split {result['split']!r}: {result['real']} vs {result['synthetic']}"]
    fd = result["segmenter_fd"]
    if "skipped" in fd:
        lines.append(f"segmenter FD   skipped: {fd['skipped']}")
    else:
        floor = fd.get("floor")
        tail = (f"  floor (real {fd['floor_split']} vs {result['split']}) {floor:.4g}  ratio {fd['ratio']:.3g}" if floor
                else f"  floor: {fd.get('floor_skipped', 'zero')}")  # fmt: skip
        lines.append(f"segmenter FD   real vs synthetic {fd['real_vs_synthetic']:.4g}{tail}")
    inc = result["inception"]
    if "skipped" in inc:
        lines.append(f"FID / KID      skipped: {inc['skipped']}")
    else:
        lines.append(f"FID / KID      {inc['fid']:.4g} / {inc['kid_mean']:.4g} ± {inc['kid_std']:.2g} (torchvision Inception)")  # fmt: skip
    rows = result["class_stats"]
    if isinstance(rows, list):
        for r in rows:
            ratio = r["ratio"]
            lap = "n/a" if ratio["laplacian_var"] is None else f"{ratio['laplacian_var']:.3g}"
            mean = "/".join("n/a" if x is None else f"{x:.2f}" for x in ratio["mean_rgb"])
            lines.append(f"class {r['name']:<14} synthetic/real  mean RGB {mean}  Laplacian var {lap}")
    div = result["diversity"]
    if "skipped" in div:
        lines.append(f"diversity      skipped: {div['skipped']}")
    else:
        ref = div.get("real_nearest_composition_distance")
        tail = f"  real nearest-composition pairs {ref:.4g}" if ref is not None else ""
        lines.append(f"diversity      variants {div['synthetic_variant_distance']:.4g}{tail}")
    if "skipped" not in result["grid"]:
        scores = "  ".join(f"{p} px {s['synthetic']:.3g} ({s['real']:.3g})" for p, s in result["grid"].items())
        lines.append(f"grid score     synthetic (real) per period: {scores}")
    return lines


def headline(result: dict[str, Any]) -> dict[str, str]:
    """The few numbers a report shows for an :func:`image_realism` result, as ``{metric: text}``."""
    fd, inc, div, rows = result["segmenter_fd"], result["inception"], result["diversity"], result["class_stats"]
    short = lambda reason: "skipped: " + re.split(r" \(|;", reason)[0]  # the JSON keeps the whole reason
    out = {"masks (real test vs synthetic test)": str(result["masks"])}
    if fd.get("ratio") is not None:
        out["segmenter FD / real floor"] = f"{fd['ratio']:.2f} ({fd['real_vs_synthetic']:.3g} vs {fd['floor']:.3g})"
    else:
        out["segmenter FD / real floor"] = short(fd.get("skipped") or fd.get("floor_skipped", "floor is zero"))
    out["FID / KID"] = short(inc["skipped"]) if "skipped" in inc else f"{inc['fid']:.4g} / {inc['kid_mean']:.3g}"
    if isinstance(rows, list) and rows:
        lap = [r["ratio"]["laplacian_var"] for r in rows if r["ratio"]["laplacian_var"] is not None]
        lap_range = f"{min(lap):.2f} to {max(lap):.2f} ({len(lap)} classes)" if lap else "no class with interior pixels"
        out["Laplacian variance, synthetic / real, per class"] = lap_range
        shift = [float(np.linalg.norm(np.subtract(r["synthetic"]["mean_rgb"], r["real"]["mean_rgb"]))) for r in rows]
        k = int(np.argmax(shift))
        out["mean-RGB shift per class (0..255)"] = f"{np.mean(shift):.1f} mean, {shift[k]:.1f} max ({rows[k]['name']})"
    if "skipped" in div:
        out["diversity, variants / real nearest"] = short(div["skipped"])
    else:
        ratio = div.get("ratio")
        out["diversity, variants / real nearest"] = f"{div['synthetic_variant_distance']:.3g}" + (
            f" / {div['real_nearest_composition_distance']:.3g} = {ratio:.2f}" if ratio is not None else "")  # fmt: skip
    return out
