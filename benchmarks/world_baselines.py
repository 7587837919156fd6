"""Per-pixel colour baselines and IoU helpers shared by the world benchmark (no torch needed)."""

from __future__ import annotations

import numpy as np

from terrasynth.data.dataset import Dataset


def load_split(ds: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 images and (N, H, W) uint8 training indices (255 = nodata)."""
    recs = ds.split(split)
    imgs = np.stack([ds.read_image(r) for r in recs])
    labs = np.stack([ds.scheme.to_indices(ds.read_label(r)) for r in recs])
    return imgs, labs


def confusion(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    ok = target != 255
    return np.bincount(target[ok].astype(np.int64) * k + pred[ok], minlength=k * k).reshape(k, k)


def scores(cm: np.ndarray) -> dict[str, float]:
    """Macro mIoU over classes present in the target, and pixel accuracy."""
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    present = cm.sum(1) > 0
    iou = tp[present] / np.maximum(union[present], 1)
    return {"miou": float(iou.mean()), "pixel_acc": float(tp.sum() / max(cm.sum(), 1)), "classes": int(present.sum())}


def nearest_colour(train_x, train_y, test_x, k):
    """Fit the mean RGB of each class on train; label each test pixel with the nearest mean."""
    x = train_x.reshape(-1, 3).astype(np.float64)
    y = train_y.ravel()
    means = np.stack([x[y == c].mean(0) if (y == c).any() else np.full(3, 1e9) for c in range(k)])
    t = test_x.reshape(-1, 3).astype(np.float32)
    d = ((t[:, None, :] - means[None].astype(np.float32)) ** 2).sum(-1)
    return d.argmin(1).reshape(test_x.shape[:-1])


def colour_bayes(train_x, train_y, test_x, k, bins=32):
    """The best any per-pixel colour rule can do here: argmax P(class | quantised RGB) from train counts."""
    q = 256 // bins
    key = lambda a: ((a[..., 0] // q).astype(np.int64) * bins + a[..., 1] // q) * bins + a[..., 2] // q  # noqa: E731
    ok = train_y != 255
    counts = np.zeros((bins**3, k), np.int64)
    np.add.at(counts, (key(train_x)[ok], train_y[ok].astype(np.int64)), 1)
    prior = np.bincount(train_y[ok], minlength=k).argmax()
    table = np.where(counts.sum(1) > 0, counts.argmax(1), prior)
    return table[key(test_x)]
