"""The cross-test matrix: every segmentation model evaluated on every test set.

Rows are (training set, architecture), columns are test sets, cells are mean ± std over
seeds of micro IoU (as in the paper's table) and macro mIoU. Laid out like the paper's
table in markdown; also JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

# The paper's dataset names, in its table order.
DATASETS = ("realrgbreallc", "fakergbreallc", "fakergbreallcspade", "fakergbfakelc")
DATASET_LABELS = {
    "realrgbreallc": "real RGB + real LC",
    "fakergbreallc": "ControlNet RGB + real LC",
    "fakergbreallcspade": "SPADE RGB + real LC",
    "fakergbfakelc": "ControlNet RGB + generated LC",
}
ARCH_LABELS = {"unet": "UNet", "unetplusplus": "UNet++", "deeplabv3plus": "DeepLabV3+"}
METRICS = ("micro_iou", "macro_miou")


@dataclass
class Cell:
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})

    def mean(self, metric: str) -> float:
        v = self.values[metric]
        return sum(v) / len(v) if v else math.nan

    def std(self, metric: str) -> float:
        v = self.values[metric]
        if len(v) < 2:
            return 0.0
        m = self.mean(metric)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


@dataclass
class Matrix:
    """Evaluation results keyed by (train set, arch, test set)."""

    train_sets: list[str]
    archs: list[str]
    test_sets: list[str]
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: Iterable[dict], train_sets: Sequence[str], archs: Sequence[str],
                     test_sets: Sequence[str]) -> "Matrix":  # fmt: skip
        """``results``: dicts with train_set, arch, test_set, seed, micro_iou, macro_miou."""
        m = cls(list(train_sets), list(archs), list(test_sets))
        for r in results:
            cell = m.cells.setdefault((r["train_set"], r["arch"], r["test_set"]), Cell())
            for metric in METRICS:
                cell.values[metric].append(float(r[metric]))
        return m

    def missing(self) -> list[tuple[str, str, str]]:
        return [
            (t, a, s) for t in self.train_sets for a in self.archs for s in self.test_sets if (t, a, s) not in self.cells
        ]

    def get(self, train: str, arch: str, test: str) -> Cell | None:
        return self.cells.get((train, arch, test))

    def to_json(self) -> dict:
        rows = []
        for (t, a, s), c in sorted(self.cells.items()):
            row = {"train_set": t, "arch": a, "test_set": s, "n_seeds": len(c.values["micro_iou"])}
            for metric in METRICS:
                row[metric] = c.mean(metric)
                row[f"{metric}_std"] = c.std(metric)
                row[f"{metric}_values"] = c.values[metric]
            rows.append(row)
        return {"train_sets": self.train_sets, "archs": self.archs, "test_sets": self.test_sets, "cells": rows}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["train_set", "arch", "test_set", "n_seeds", "micro_iou", "micro_iou_std", "macro_miou", "macro_miou_std"])
        for (t, a, s), c in sorted(self.cells.items()):
            w.writerow([t, a, s, len(c.values["micro_iou"]), f"{c.mean('micro_iou'):.4f}", f"{c.std('micro_iou'):.4f}",
                        f"{c.mean('macro_miou'):.4f}", f"{c.std('macro_miou'):.4f}"])  # fmt: skip
        return buf.getvalue()

    def to_markdown(self, metric: str = "micro_iou") -> str:
        """The paper's layout: rows training set x architecture, columns test sets."""
        head = "| train set | model | " + " | ".join(self.test_sets) + " |"
        sep = "|---|---|" + "---|" * len(self.test_sets)
        lines = [head, sep]
        for t in self.train_sets:
            for a in self.archs:
                cells = []
                for s in self.test_sets:
                    c = self.get(t, a, s)
                    if c is None:
                        cells.append("–")
                    elif len(c.values[metric]) > 1:
                        cells.append(f"{c.mean(metric):.3f} ± {c.std(metric):.3f}")
                    else:
                        cells.append(f"{c.mean(metric):.3f}")
                lines.append(f"| {t} | {ARCH_LABELS.get(a, a)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def transfer_ratios(self, real: str = "realrgbreallc", metric: str = "micro_iou") -> dict[str, dict[str, float]]:
        """IoU(train synthetic, test real) / IoU(train real, test real), per synthetic set and arch."""
        out: dict[str, dict[str, float]] = {}
        for t in self.train_sets:
            if t == real:
                continue
            for a in self.archs:
                num, den = self.get(t, a, real), self.get(real, a, real)
                if num and den and den.mean(metric) > 0:
                    out.setdefault(t, {})[a] = num.mean(metric) / den.mean(metric)
        return out
