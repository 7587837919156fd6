"""Realism of generated land-cover maps against real ones.

- class-frequency Jensen–Shannon divergence (base 2, so 0..1);
- landscape metrics per class (FRAGSTATS definitions, 8-neighbour patches): patch density
  (patches / 100 ha), mean patch area (ha), edge density (m / ha, landscape boundary not
  counted), largest-patch index (%) through pylandstats, and the aggregation index (%),
  which pylandstats 3.1 does not offer, computed here from like adjacencies. Each is
  computed per tile and averaged over the tiles where the class is present;
- diversity: mean pairwise pixel disagreement between generated maps;
- memorisation: for each generated map, the smallest pixel disagreement with any
  training map under the 8 dihedral transforms (flips and 90-degree rotations).

Maps are (N, H, W) arrays of class *codes*; nodata pixels are ignored throughout.
Realism of synthetic *images* (FID/KID, segmenter-feature FD, colour, texture): :mod:`terrasynth.evaluate.image_realism`.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from terrasynth.classes import ClassScheme
from terrasynth.data.dataset import Dataset
from terrasynth.data.torchdata import dihedral_t

LANDSCAPE_METRICS = ("patch_density", "area_mn", "edge_density", "largest_patch_index", "aggregation_index")
_PLS_METRICS = ["number_of_patches", "patch_density", "area_mn", "edge_density", "largest_patch_index"]


def as_maps(data: Dataset | np.ndarray, splits: Sequence[str] = ()) -> np.ndarray:
    """(N, H, W) uint8 class codes from a dataset (the given splits, all when empty) or an array."""
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False)
    return np.stack([data.read_label(r) for r in data.split(*splits)])


def class_frequencies(maps: np.ndarray, scheme: ClassScheme) -> np.ndarray:
    """(K,) pixel shares of the scheme's classes (nodata excluded)."""
    counts = np.bincount(maps.ravel(), minlength=256).astype(np.float64)[scheme.codes]
    return counts / max(counts.sum(), 1.0)


def compositions(maps: np.ndarray, scheme: ClassScheme) -> np.ndarray:
    """(N, K) per-map class shares (nodata excluded)."""
    lut = scheme.code_to_index_lut
    k = scheme.num_classes
    out = np.zeros((len(maps), k))
    for i, m in enumerate(maps):
        c = np.bincount(lut[m].ravel(), minlength=256)[:k].astype(np.float64)
        out[i] = c / max(c.sum(), 1.0)
    return out


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JS divergence in bits between two distributions (normalised here)."""
    p = np.asarray(p, np.float64) / max(np.sum(p), 1e-12)
    q = np.asarray(q, np.float64) / max(np.sum(q), 1e-12)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def aggregation_index(tile: np.ndarray, code: int) -> float:
    """FRAGSTATS AI (%) of ``code`` in one map: like adjacencies / their maximum for that area.

    NaN when the class holds fewer than two cells (the index is undefined).
    """
    m = tile == code
    area = int(m.sum())
    n = int(np.floor(np.sqrt(area)))
    r = area - n * n
    max_g = 2 * n * (n - 1) + (0 if r == 0 else 2 * r - 1 if r <= n else 2 * r - 2)
    if max_g <= 0:
        return float("nan")
    g = int(np.sum(m[:, 1:] & m[:, :-1]) + np.sum(m[1:, :] & m[:-1, :]))
    return 100.0 * g / max_g


def landscape_metrics(
    maps: np.ndarray, scheme: ClassScheme, *, res: float = 10.0, codes: Sequence[int] | None = None
) -> dict[int, dict[str, float]]:
    """Per class code: each of :data:`LANDSCAPE_METRICS` (plus ``patches`` per tile and
    ``presence``, the share of maps holding the class), averaged over maps where present.

    ``res`` is the pixel size in metres.
    """
    with warnings.catch_warnings():  # imported here: it pulls in geopandas, dask and a second GDAL
        warnings.simplefilter("ignore")
        import pylandstats as pls

    codes = list(scheme.codes if codes is None else codes)
    acc: dict[int, dict[str, list[float]]] = {c: {k: [] for k in (*LANDSCAPE_METRICS, "patches")} for c in codes}
    nodata = scheme.nodata if scheme.nodata is not None else 255
    for tile in maps:
        present = [c for c in codes if np.any(tile == c)]
        if not present or np.all(tile == nodata):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ls = pls.Landscape(tile, res=(res, res), nodata=nodata)
            df = ls.compute_class_metrics_df(metrics=_PLS_METRICS, classes=present)
        for c in present:
            row = df.loc[c]
            a = acc[c]
            a["patches"].append(float(row["number_of_patches"]))
            for k in ("patch_density", "area_mn", "edge_density", "largest_patch_index"):
                a[k].append(float(row[k]))
            a["aggregation_index"].append(aggregation_index(tile, c))
    out: dict[int, dict[str, float]] = {}
    for c in codes:
        vals = acc[c]
        n = len(vals["patches"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN column
            out[c] = {k: (float(np.nanmean(v)) if n else float("nan")) for k, v in vals.items()}
        out[c]["presence"] = n / max(len(maps), 1)
    return out


def diversity(maps: np.ndarray, max_pairs: int = 20000, seed: int = 0) -> float:
    """Mean pixel disagreement over pairs of maps (all pairs, or ``max_pairs`` random ones)."""
    n = len(maps)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, 1)
    if len(i) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    flat = maps.reshape(n, -1)
    return float(np.mean([np.mean(flat[a] != flat[b]) for a, b in zip(i, j)]))


@torch.no_grad()
def nearest_disagreement(
    generated: np.ndarray, train: np.ndarray, *, transforms: bool = True, chunk: int = 64
) -> np.ndarray:
    """(N,) smallest pixel disagreement of each generated map with any training map.

    Agreement counts are one matrix product of one-hot maps: (N*8, K*H*W) @ (K*H*W, T).
    Maps must have the same (H, W); with ``transforms`` the 8 dihedral variants of each
    generated map are compared too.
    """
    if generated.shape[1:] != train.shape[1:]:
        raise ValueError(f"map sizes differ: {generated.shape[1:]} vs {train.shape[1:]}")
    codes = np.union1d(np.unique(generated), np.unique(train))
    lut = np.zeros(256, np.int64)
    lut[codes] = np.arange(len(codes))
    k, hw = len(codes), int(np.prod(train.shape[1:]))

    def onehot(m: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(lut[np.ascontiguousarray(m)].reshape(len(m), -1))
        return torch.nn.functional.one_hot(idx, k).transpose(1, 2).reshape(len(m), -1).float()

    t = onehot(train)  # (T, K*HW)
    best = np.ones(len(generated))
    g = torch.from_numpy(np.ascontiguousarray(generated))
    variants = [dihedral_t(g, r).numpy() for r in range(8)] if transforms else [generated]
    for s in range(0, len(generated), chunk):
        for v in variants:
            agree = onehot(v[s : s + chunk]) @ t.T  # (c, T) pixels equal
            best[s : s + chunk] = np.minimum(best[s : s + chunk], 1.0 - agree.max(1).values.numpy() / hw)
    return best


def realism_metrics(
    real: Dataset | np.ndarray,
    generated: Dataset | np.ndarray,
    scheme: ClassScheme,
    *,
    train: Dataset | np.ndarray | None = None,
    res: float = 10.0,
    top_classes: int = 3,
    real_splits: Sequence[str] = (),
) -> dict:
    """Compare generated maps with real ones; memorisation against ``train`` (default: ``real``).

    Returns JSON-ready numbers: ``class_jsd``, per-class frequencies, ``landscape`` (real,
    generated and relative error for the ``top_classes`` most frequent real classes, and
    the worst relative error among them), ``diversity`` (generated and real), and
    ``memorisation`` (min / 5th percentile / mean of nearest-training-map disagreement).
    """
    real_maps = as_maps(real, real_splits)
    gen_maps = as_maps(generated)
    train_maps = real_maps if train is None else as_maps(train, ("train",) if isinstance(train, Dataset) else ())
    f_real, f_gen = class_frequencies(real_maps, scheme), class_frequencies(gen_maps, scheme)
    top = [scheme.codes[i] for i in np.argsort(-f_real)[:top_classes] if f_real[i] > 0]
    lm_real = landscape_metrics(real_maps, scheme, res=res, codes=top)
    lm_gen = landscape_metrics(gen_maps, scheme, res=res, codes=top)
    landscape: dict[str, dict] = {}
    worst = 0.0
    for c in top:
        rel = {}
        for k in LANDSCAPE_METRICS:
            r, g = lm_real[c][k], lm_gen[c][k]
            rel[k] = abs(g - r) / abs(r) if r and np.isfinite(r) and np.isfinite(g) else float("nan")
            if np.isfinite(rel[k]):
                worst = max(worst, rel[k])
            elif np.isfinite(r):
                worst = float("inf")  # the class never appears in the generated maps
        landscape[str(c)] = {"real": lm_real[c], "generated": lm_gen[c], "relative_error": rel}
    near = nearest_disagreement(gen_maps, train_maps)
    # A map that is >= 95% one class is within 5% of any uniform training map of that class:
    # closeness says nothing about copying there, so such maps are also counted apart.
    trivial = compositions(gen_maps, scheme).max(1) >= 0.95
    return {
        "num_real": int(len(real_maps)),
        "num_generated": int(len(gen_maps)),
        "class_jsd": jensen_shannon(f_real, f_gen),
        "class_frequencies": {
            str(c): {"real": float(a), "generated": float(b)} for c, a, b in zip(scheme.codes, f_real, f_gen)
        },
        "top_classes": top,
        "landscape": landscape,
        "landscape_worst_relative_error": worst,
        "diversity": {"generated": diversity(gen_maps), "real": diversity(real_maps)},
        "memorisation": {
            "min_disagreement": float(near.min()),
            "p05_disagreement": float(np.percentile(near, 5)),
            "mean_disagreement": float(near.mean()),
            "under_5_percent": int(np.sum(near < 0.05)),
            "near_uniform_maps": int(trivial.sum()),
            "under_5_percent_not_near_uniform": int(np.sum((near < 0.05) & ~trivial)),
        },
    }


def composition_error(maps: np.ndarray, requested: dict[int, float], scheme: ClassScheme) -> dict:
    """Requested vs achieved mean share for each requested class code, and the mean absolute error."""
    achieved = compositions(maps, scheme).mean(0)
    lut = {c: i for i, c in enumerate(scheme.codes)}
    rows = {str(c): {"requested": float(f), "achieved": float(achieved[lut[c]])} for c, f in requested.items()}
    mae = float(np.mean([abs(r["requested"] - r["achieved"]) for r in rows.values()])) if rows else 0.0
    return {"classes": rows, "mean_abs_error": mae}
