"""Statistics of the scarce-label experiment: seeds, confidence intervals, paired gains, a verdict.

The experiment writes ``learning_curve.json``: one point per (label fraction, recipe, seed), each
with validation and test metrics. Seeds are paired across recipes within a fraction (seed ``s`` of
a recipe and seed ``s`` of ``"real"`` share the real subset and the initialisation), so a recipe's
gain is measured as the mean of per-seed differences with a Student-t interval. Recipes are chosen
on validation; test only measures the chosen one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as _st

from terrasynth.errors import UserError

BASELINE = "real"
LEVEL = 0.95


# ---- intervals ------------------------------------------------------------------------------


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean and its two-sided Student-t interval.

    One value has no spread to estimate: ``lo = hi = nan``, never a zero-width interval. No values:
    all three nan. NaN values propagate (filter them first if they mean "absent").
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def paired_difference(
    a_by_seed: Mapping[int, float], b_by_seed: Mapping[int, float], level: float = LEVEL
) -> dict[str, Any]:
    """Mean of ``a[s] - b[s]`` over the seeds present in both, with its t interval.

    Returns ``mean, lo, hi, n, seeds, p_value`` (two-sided paired t-test; nan for one seed) and
    ``wins`` (seeds where ``a > b``). Raises ``ValueError`` when no seed is common.
    """
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    if not seeds:
        raise ValueError(
            f"paired_difference: no common seed (a has {sorted(a_by_seed)}, b has {sorted(b_by_seed)}); "
            "a paired comparison needs the same seeds on both sides"
        )
    d = np.array([a_by_seed[s] - b_by_seed[s] for s in seeds], dtype=float)
    mean, lo, hi = mean_ci(d, level)
    n = len(seeds)
    if n < 2:
        p = math.nan
    else:
        sd = float(d.std(ddof=1))
        if sd == 0.0:  # every seed moved by exactly the same amount: t is 0 or infinite
            p = 1.0 if mean == 0.0 else 0.0
        else:
            t = mean / (sd / math.sqrt(n))
            p = float(2 * _st.t.sf(abs(t), n - 1))
    return {"mean": mean, "lo": lo, "hi": hi, "n": n, "seeds": seeds, "p_value": p, "wins": int((d > 0).sum())}


# ---- the learning-curve document ------------------------------------------------------------


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_learning_curve(doc: Any, source: str = "learning_curve.json") -> dict[str, Any]:
    """Check the ``learning_curve.json`` schema; a bad document is a one-line :class:`UserError`."""
    fix = "it should be the learning_curve.json written by the scarce stage"
    if not isinstance(doc, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(doc).__name__}; {fix}")
    for key, kind in (("recipes", dict), ("points", list)):
        if not isinstance(doc.get(key), kind):
            raise UserError(f"{source}: missing or malformed {key!r} (expected a {kind.__name__}); {fix}")
    if BASELINE not in doc["recipes"]:
        raise UserError(f"{source}: recipes has no {BASELINE!r} baseline (has {list(doc['recipes'])}); {fix}")
    seen: set[tuple[float, str, int]] = set()
    for i, p in enumerate(doc["points"]):
        where = f"{source}: points[{i}]"
        if not isinstance(p, dict):
            raise UserError(f"{where}: expected an object; {fix}")
        f, r, s = p.get("fraction"), p.get("recipe"), p.get("seed")
        if not _number(f) or not 0 < f <= 1:
            raise UserError(f"{where}: fraction {f!r} is not a number in (0, 1]; {fix}")
        if r not in doc["recipes"]:
            raise UserError(f"{where}: recipe {r!r} is not one of the declared recipes {list(doc['recipes'])}; {fix}")
        if not isinstance(s, int) or isinstance(s, bool):
            raise UserError(f"{where}: seed {s!r} is not an integer; {fix}")
        if (f, r, s) in seen:
            raise UserError(f"{where}: duplicate point (fraction {f:g}, recipe {r}, seed {s}); {fix}")
        seen.add((f, r, s))
        for split, keys in (("val", ("macro_miou",)), ("test", ("micro_iou", "macro_miou"))):
            m = p.get(split)
            if not isinstance(m, dict) or not all(_number(m.get(k)) and math.isfinite(m[k]) for k in keys):
                raise UserError(f"{where}: {split} needs finite numbers {', '.join(keys)} (got {m!r}); {fix}")
        if not isinstance(p.get("machine", ""), str):
            raise UserError(f"{where}: machine {p['machine']!r} is not a string; {fix}")
        pc = p["test"].get("per_class_iou", {})
        if not isinstance(pc, dict) or not all(v is None or _number(v) for v in pc.values()):
            raise UserError(f"{where}: test.per_class_iou must map class -> IoU or null; {fix}")
    h = doc.get("headline_recipe")
    if h is not None and (h == BASELINE or h not in doc["recipes"]):
        raise UserError(f"{source}: headline_recipe {h!r} is not a declared synthetic recipe; {fix}")
    return doc


def load_learning_curve(path: str | Path) -> dict[str, Any]:
    """Read and validate ``learning_curve.json``; every problem is a one-line :class:`UserError`."""
    from terrasynth.io import read_json

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the learning_curve.json of a scarce-label run")
    return validate_learning_curve(read_json(path, "pass the learning_curve.json of a scarce-label run"), str(path))


def merge_learning_curves(docs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One learning curve from several (``[(source, doc), ...]``): the same experiment extended
    with more seeds in another output folder, or on another machine.

    Points are pooled; a (fraction, recipe, seed) found twice is kept once when both score the same
    (a run found again), and is a one-line :class:`UserError` when they differ (the same seed run
    twice, e.g. on two machine kinds: give one of them other seeds). Datasets and the configs of
    recipes with the same name must agree.
    """
    first_src, first = docs[0]
    out: dict[str, Any] = {k: v for k, v in first.items() if k != "points"}
    out.update(recipes=dict(first["recipes"]), recipe_configs=dict(first.get("recipe_configs") or {}),
               labelled=dict(first.get("labelled") or {}), merged_from=[src for src, _ in docs],
               stages={f: dict(v) for f, v in (first.get("stages") or {}).items()})  # fmt: skip
    out.pop("segment_config", None)
    seen: dict[tuple[float, str, int], tuple[str, dict[str, Any]]] = {}
    points: list[dict[str, Any]] = []
    for src, doc in docs:
        if doc.get("dataset") != first.get("dataset"):
            raise UserError(f"{src}: dataset {doc.get('dataset')!r} differs from {first.get('dataset')!r} in "
                            f"{first_src}; merge learning curves of one experiment only")  # fmt: skip
        for name, cfg in (doc.get("recipe_configs") or {}).items():
            if out["recipe_configs"].setdefault(name, cfg) != cfg:
                raise UserError(f"{src}: recipe {name!r} has another config than in {first_src}; rename one of "
                                "them in its config before merging")  # fmt: skip
        for f, keys in (doc.get("stages") or {}).items():
            have = out.setdefault("stages", {}).setdefault(f, {})
            for stage, key in keys.items():
                if have.setdefault(stage, key) != key:
                    raise UserError(f"{src}: the {stage} stage at {f} of the labels is another one (key {key}, "
                                    f"{have[stage]} before): its points are not the same experiment's; "
                                    "compare them side by side instead")  # fmt: skip
        for k in ("headline_recipe", "label_seed", "arch", "encoder", "segment_config"):
            if k == "segment_config" and k not in doc:
                continue  # written since session 19; older files do not say
            out.setdefault(k, doc.get(k))
            if doc.get(k) != out.get(k):
                raise UserError(f"{src}: {k} {doc.get(k)!r} differs from {out.get(k)!r} before it; "
                                "merge learning curves of one experiment only")  # fmt: skip
        out["recipes"].update({r: d for r, d in doc["recipes"].items() if r not in out["recipes"]})
        out["labelled"].update({f: v for f, v in (doc.get("labelled") or {}).items() if f not in out["labelled"]})
        for p in doc["points"]:
            key = (p["fraction"], p["recipe"], p["seed"])
            if key not in seen:
                seen[key] = (src, p)
                points.append(p)
                continue
            other_src, q = seen[key]
            score = lambda x: (x["test"]["macro_miou"], x["test"]["micro_iou"], x["val"]["macro_miou"])  # noqa: E731
            if score(p) != score(q):
                raise UserError(
                    f"{src}: {p['recipe']} seed {p['seed']} at {pct(p['fraction'])} scored {p['test']['macro_miou']:.4f} "
                    f"test macro mIoU, {q['test']['macro_miou']:.4f} in {other_src} ({p.get('machine') or UNRECORDED} vs "
                    f"{q.get('machine') or UNRECORDED}); the same seed ran twice: drop one file or rerun one with other seeds"
                )
    out["points"] = points
    return validate_learning_curve(out, " + ".join(src for src, _ in docs))


def _points(doc: Mapping[str, Any], fraction: float, recipe: str) -> list[dict[str, Any]]:
    return [p for p in doc["points"] if p["fraction"] == fraction and p["recipe"] == recipe]


def _by_seed(points: list[dict[str, Any]], split: str, key: str) -> dict[int, float]:
    return {p["seed"]: float(p[split][key]) for p in points}


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def controls(doc: Mapping[str, Any]) -> list[str]:
    """Recipes that add no synthetic image (``pretrain_on: real``, the pretrain recipes' compute control)."""
    return [r for r, c in (doc.get("recipe_configs") or {}).items() if (c or {}).get("pretrain_on") == "real"]


def best_recipe(doc: Mapping[str, Any], fraction: float) -> str | None:
    """The synthetic recipe with the highest mean VALIDATION macro mIoU at ``fraction``.

    Test never takes part: a recipe picked on test would carry its test luck into the headline.
    Ties go to the recipe declared first in ``doc["recipes"]``; ``None`` when no synthetic recipe ran.
    Controls are never chosen: they measure a recipe, they are not one.
    """
    best, best_val = None, -math.inf
    skip = {BASELINE, *controls(doc)}
    for recipe in doc["recipes"]:
        if recipe in skip:
            continue
        vals = [p["val"]["macro_miou"] for p in _points(doc, fraction, recipe) if _finite(p["val"]["macro_miou"])]
        if vals and (v := float(np.mean(vals))) > best_val:
            best, best_val = recipe, v
    return best


def _ci(values: list[float], level: float) -> dict[str, float]:
    mean, lo, hi = mean_ci(values, level)
    return {"mean": mean, "lo": lo, "hi": hi}


def _per_class_gain(
    pts: list[dict[str, Any]], base: list[dict[str, Any]], level: float
) -> tuple[dict[str, Any], list[str]]:
    """Paired per-class IoU gain over the seeds where both runs have a finite IoU for the class."""
    a = {p["seed"]: p["test"].get("per_class_iou", {}) for p in pts}
    b = {p["seed"]: p["test"].get("per_class_iou", {}) for p in base}
    seeds = sorted(set(a) & set(b))
    classes = list(dict.fromkeys(c for s in seeds for c in (*a[s], *b[s])))
    gains: dict[str, Any] = {}
    notes: list[str] = []
    for c in classes:
        ok = [s for s in seeds if _finite(a[s].get(c)) and _finite(b[s].get(c))]
        if not ok:
            notes.append(f"{c}: IoU missing/NaN in every paired run (absent from the test split?): class skipped")
            continue
        if len(ok) < len(seeds):
            notes.append(f"{c}: IoU missing/NaN in {len(seeds) - len(ok)} of {len(seeds)} seeds: those seeds skipped")
        gains[c] = paired_difference({s: float(a[s][c]) for s in ok}, {s: float(b[s][c]) for s in ok}, level)
    return gains, notes


def learning_curve_summary(doc: Mapping[str, Any], level: float = LEVEL) -> dict[str, Any]:
    """Per (fraction, recipe): seeds, test micro IoU / macro mIoU with CIs, mean val macro mIoU;
    for synthetic recipes also the paired gain over ``real`` and the per-class gains.

    Returns ``{"level", "dataset", "fractions", "recipes", "headline": [{fraction, recipe, chosen_by}],
    "cells": [...], "notes": [...]}``; use :func:`cell` to look one up.
    """
    fractions = sorted({p["fraction"] for p in doc["points"]})
    present = {p["recipe"] for p in doc["points"]}
    recipes = [r for r in doc["recipes"] if r in present]
    cells: list[dict[str, Any]] = []
    notes: list[str] = []
    configs = doc.get("recipe_configs") or {}
    ctrl = [r for r in controls(doc) if r in present]
    for f in fractions:
        base = _points(doc, f, BASELINE)
        for r in recipes:
            pts = _points(doc, f, r)
            if not pts:
                continue
            c: dict[str, Any] = {
                "fraction": f, "recipe": r, "n": len(pts), "seeds": sorted(p["seed"] for p in pts),
                "test_macro_miou": _ci([p["test"]["macro_miou"] for p in pts], level),
                "test_micro_iou": _ci([p["test"]["micro_iou"] for p in pts], level),
                "val_macro_miou": float(np.mean([p["val"]["macro_miou"] for p in pts])),
                "vs_real": None, "per_class_gain": {}, "per_class_notes": [], "vs_control": None,
            }  # fmt: skip
            if r != BASELINE:
                common = set(c["seeds"]) & {p["seed"] for p in base}
                if not common:
                    notes.append(f"fraction {f:g}, {r}: no {BASELINE!r} run with the same seed: no paired comparison")
                else:
                    if len(common) < len(pts) or len(common) < len(base):
                        notes.append(
                            f"fraction {f:g}, {r}: compared on the {len(common)} seed(s) both ran: {sorted(common)}"
                        )
                    mixed = sorted(sd for sd in common if UNRECORDED not in (m := {_machine_of(pts, sd), _machine_of(base, sd)})
                                   and len(m) == 2)  # fmt: skip
                    if mixed:
                        notes.append(f"fraction {f:g}, {r}: seed(s) {mixed} pair runs from different machines or "
                                     "precisions (another realisation, not a replay of the same seed)")  # fmt: skip
                    c["vs_real"] = {m: paired_difference(_by_seed(pts, "test", m), _by_seed(base, "test", m), level)
                                    for m in ("macro_miou", "micro_iou")}  # fmt: skip
                    c["per_class_gain"], c["per_class_notes"] = _per_class_gain(pts, base, level)
                if (configs.get(r) or {}).get("pretrain") and r not in ctrl:
                    c["vs_control"] = _vs_control(doc, f, pts, ctrl, level)
            cells.append(c)
    declared = doc.get("headline_recipe")
    headline = []
    for f in fractions:
        if declared is not None and _points(doc, f, declared):
            headline.append({"fraction": f, "recipe": declared, "chosen_by": "declared in learning_curve.json"})
        else:
            headline.append({"fraction": f, "recipe": best_recipe(doc, f), "chosen_by": "best mean val macro mIoU"})
    synthetic_only = [r for r in recipes if (configs.get(r) or {}).get("synthetic_only")]
    machines: dict[str, int] = {}
    for p in doc["points"]:
        machines[p.get("machine") or UNRECORDED] = machines.get(p.get("machine") or UNRECORDED, 0) + 1
    return {"level": level, "dataset": doc.get("dataset"), "fractions": fractions, "recipes": recipes,
            "synthetic_only": synthetic_only, "controls": ctrl, "headline": headline, "cells": cells,
            "machines": machines, "notes": notes}  # fmt: skip


UNRECORDED = "not recorded"


def _machine_of(points: list[dict[str, Any]], seed: int) -> str:
    return next((p.get("machine") or UNRECORDED for p in points if p["seed"] == seed), UNRECORDED)


def _vs_control(doc: Mapping[str, Any], f: float, pts: list[dict[str, Any]], ctrl: list[str], level: float) -> dict[str, Any] | None:
    """A pretrain recipe against the first control with seeds in common at ``f``: the paired test
    macro / micro gain that its synthetic images, not its second phase, bought."""
    for r in ctrl:
        other = _points(doc, f, r)
        if set(_by_seed(pts, "test", "macro_miou")) & set(_by_seed(other, "test", "macro_miou")):
            return {"control": r, **{m: paired_difference(_by_seed(pts, "test", m), _by_seed(other, "test", m), level)
                                     for m in ("macro_miou", "micro_iou")}}  # fmt: skip
    return None


def cell(summary: Mapping[str, Any], fraction: float, recipe: str) -> dict[str, Any] | None:
    """The summary cell of one (fraction, recipe), or ``None``."""
    return next((c for c in summary["cells"] if c["fraction"] == fraction and c["recipe"] == recipe), None)


# ---- words ----------------------------------------------------------------------------------


def pct(f: float) -> str:
    return f"{100 * f:g}%"


def _p(p: float) -> str:
    return "p n/a" if not math.isfinite(p) else ("p<0.001" if p < 0.001 else f"p={p:.3f}")


def verdict(summary: Mapping[str, Any], target: float = 0.05, no_harm: float = -0.005, ratio: float = 0.9) -> list[str]:
    """Plain-language conclusions for the headline recipe at each fraction, and issue #15's targets
    (each met or missed, and by how much): a paired gain of at least ``target`` test macro mIoU at
    the smallest fraction under 100%; at 100% of the labels a mean paired gain of at least
    ``no_harm`` (the recipe does not hurt), and a synthetic-only recipe reaching ``ratio`` x real."""
    lvl = f"{100 * summary['level']:g}% CI"
    declared = any(h["chosen_by"].startswith("declared") for h in summary["headline"])
    how = ("is the headline_recipe declared in learning_curve.json" if declared
           else "at each fraction is the one with the best mean validation macro mIoU")  # fmt: skip
    lines = [f"Gains are paired over seeds (same real subset and initialisation), in test macro mIoU; the recipe {how}; "
             "test only measures it."]  # fmt: skip
    if not summary["fractions"]:
        return lines + ["No points: the experiment has no results yet, no claim."]
    by_f = {h["fraction"]: h for h in summary["headline"]}
    for f in summary["fractions"]:
        at = f"At {pct(f)} of the labels"
        r = by_f[f]["recipe"]
        if r is None:
            lines.append(f"{at}, only the real baseline ran: no comparison.")
            continue
        c = cell(summary, f, r)
        d = c["vs_real"] and c["vs_real"]["macro_miou"]
        who = f"real + {r}"
        if not d:
            lines.append(f"{at}, {who} has no real-only run with the same seed: no comparison, no claim.")
        elif d["n"] < 2:
            lines.append(f"{at}, {who} vs real alone: {d['mean']:+.3f} macro mIoU with only one seed: "
                         "no confidence interval, no claim.")  # fmt: skip
        else:
            ci = f"({lvl} {d['lo']:+.3f} to {d['hi']:+.3f}, {d['n']} seeds, {_p(d['p_value'])}, better in {d['wins']} of {d['n']})"
            if d["lo"] > 0:
                lines.append(
                    f"{at}, {who} beats real alone by {d['mean']:+.3f} macro mIoU {ci}: synthetic data helped."
                )
            elif d["hi"] < 0:
                lines.append(
                    f"{at}, {who} is worse than real alone by {d['mean']:+.3f} macro mIoU {ci}: synthetic data hurt."
                )
            else:
                lines.append(f"{at}, {who} changes macro mIoU by {d['mean']:+.3f} {ci}: "
                             "synthetic data did NOT measurably help (CI includes 0).")  # fmt: skip
        if c.get("vs_control"):
            lines.append(_control_line(at, r, c["vs_control"], lvl))
    scarce = [f for f in summary["fractions"] if f < 1.0]
    if scarce:
        lines.append(_target_line(summary, by_f, scarce[0], target, lvl))
    if 1.0 in summary["fractions"]:
        lines += _full_label_lines(summary, by_f, no_harm, ratio, lvl)
    machines = {m: n for m, n in (summary.get("machines") or {}).items() if m != UNRECORDED}
    if len(machines) > 1:
        kinds = "; ".join(f"{m} ({n} run{'s' if n != 1 else ''})" for m, n in machines.items())
        lines.append(f"These runs come from {len(machines)} machine kinds or precisions ({kinds}). A seed gives other "
                     "numbers on another kind, so seeds are pooled as independent draws, not replays "
                     "(docs/reliability.md).")  # fmt: skip
    if machines and (summary.get("machines") or {}).get(UNRECORDED):
        lines.append(f"Runs without a recorded machine: {summary['machines'][UNRECORDED]} (trained before it was "
                     "recorded); pair them with the others only if they ran on the same kind.")  # fmt: skip
    others = [r for r in summary["recipes"] if r != BASELINE and r not in summary.get("controls", [])]
    if len(others) > 1:
        lines.append(f"{len(others)} synthetic recipes were tried; the table's intervals for the others are not "
                     "corrected for multiple comparisons.")  # fmt: skip
    return lines


def _control_line(at: str, r: str, vc: Mapping[str, Any], lvl: str) -> str:
    """Does a pretrain recipe's gain survive its compute control (real tiles twice, no synthetic image)?"""
    d, ctl = vc["macro_miou"], vc["control"]
    head = f"{at}, against its compute control {ctl} (the same two phases on real tiles alone)"
    if d["n"] < 2:
        return f"{head}, {r} differs by {d['mean']:+.3f} macro mIoU with one seed: no claim."
    ci = f"({lvl} {d['lo']:+.3f} to {d['hi']:+.3f}, {d['n']} seeds, {_p(d['p_value'])}, better in {d['wins']} of {d['n']})"
    if d["lo"] > 0:
        return f"{head}, {r} gains {d['mean']:+.3f} macro mIoU {ci}: the synthetic images, not the extra phase, bought it."
    if d["hi"] < 0:
        return f"{head}, {r} loses {d['mean']:+.3f} macro mIoU {ci}: the extra phase, not the synthetic images, bought its gain."
    return f"{head}, {r} differs by {d['mean']:+.3f} macro mIoU {ci}: the synthetic images' own share is not measurable."


def _full_label_lines(summary: Mapping[str, Any], by_f: dict[float, Any], no_harm: float, ratio: float, lvl: str) -> list[str]:
    """At 100% of the labels: does the headline recipe not hurt, and how close do images alone come to real?"""
    head = f"Target at 100% of the labels (the recipe does not hurt: mean gain >= {no_harm:+.3f} macro mIoU):"
    r = by_f[1.0]["recipe"]
    c = cell(summary, 1.0, r) if r else None
    d = c and c["vs_real"] and c["vs_real"]["macro_miou"]
    if not d:
        out = [f"{head} cannot be judged: no paired synthetic-vs-real result at 100%."]
    elif d["n"] < 2:
        out = [f"{head} cannot be judged with one seed (single-seed gain {d['mean']:+.3f})."]
    else:
        ci = f"{lvl} {d['lo']:+.3f} to {d['hi']:+.3f}, {d['n']} seeds"
        if d["mean"] >= no_harm:
            out = [f"{head} met: real + {r} adds {d['mean']:+.3f} ({ci})."]
        else:
            out = [f"{head} NOT met: real + {r} changes it by {d['mean']:+.3f} ({ci}), {no_harm - d['mean']:.3f} under the bar."]
    head = f"Target synthetic-only at 100% of the labels (>= {ratio:.2f}x real by test macro mIoU):"
    real = cell(summary, 1.0, BASELINE)
    alone = [(cell(summary, 1.0, r), r) for r in summary.get("synthetic_only", [])]
    alone = [(c["test_macro_miou"]["mean"], r) for c, r in alone if c is not None]
    if real is None or not alone or not real["test_macro_miou"]["mean"] > 0:
        return out + [f"{head} cannot be judged: no synthetic-only recipe (and real baseline) ran at 100%."]
    best, r = max(alone)
    x = best / real["test_macro_miou"]["mean"]
    verdict_ = "met" if x >= ratio else f"NOT met, missed by {ratio - x:.2f}"
    return out + [f"{head} {verdict_}: {r} reaches {x:.2f}x ({best:.3f} vs {real['test_macro_miou']['mean']:.3f})."]


def _target_line(summary: Mapping[str, Any], by_f: dict[float, Any], f: float, target: float, lvl: str) -> str:
    head = f"Target (+{target:.3f} macro mIoU at {pct(f)} of the labels):"
    r = by_f[f]["recipe"]
    c = cell(summary, f, r) if r else None
    d = c and c["vs_real"] and c["vs_real"]["macro_miou"]
    if not d:
        return f"{head} cannot be judged: no paired synthetic-vs-real result at this fraction."
    if d["n"] < 2:
        return f"{head} cannot be judged with one seed (single-seed gain {d['mean']:+.3f})."
    if d["mean"] < target:
        tail = ("the whole CI is below the target" if d["hi"] < target
                else f"the CI upper bound {d['hi']:+.3f} still reaches it; more seeds would tell")  # fmt: skip
        return f"{head} NOT met: mean gain {d['mean']:+.3f} misses it by {target - d['mean']:.3f} ({tail})."
    if d["lo"] >= target:
        return f"{head} met with confidence: mean gain {d['mean']:+.3f} (by {d['mean'] - target:.3f}), {lvl} lower bound {d['lo']:+.3f}."
    return (f"{head} met on the mean only: mean gain {d['mean']:+.3f} exceeds it by {d['mean'] - target:.3f}, but the "
            f"{lvl} lower bound {d['lo']:+.3f} is below the target.")  # fmt: skip


def _mci(ci: Mapping[str, float]) -> str:
    if not math.isfinite(ci["lo"]):
        return f"{ci['mean']:.3f} (no CI)"
    return f"{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def _diff(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "-"
    if d["n"] < 2:
        return f"{d['mean']:+.3f} (1 seed, no CI)"
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {_p(d['p_value'])}, {d['wins']}/{d['n']} wins"


def summary_table(summary: Mapping[str, Any]) -> str:
    """Markdown table, one row per (fraction, recipe); ``*`` marks the headline recipe."""
    lvl = f"{100 * summary['level']:g}%"
    heads = {h["fraction"]: h["recipe"] for h in summary["headline"]}
    rows = ["| labels | recipe | n | test macro mIoU [" + lvl + " CI] | test micro IoU [" + lvl + " CI] | val macro mIoU "
            "| gain vs real, test macro mIoU | gain vs real, test micro IoU |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in summary["cells"]:
        name = c["recipe"] + (" *" if heads.get(c["fraction"]) == c["recipe"] else "")
        name += " (control)" if c["recipe"] in summary.get("controls", []) else ""
        vs = c["vs_real"] or {}
        rows.append(f"| {pct(c['fraction'])} | {name} | {c['n']} | {_mci(c['test_macro_miou'])} | {_mci(c['test_micro_iou'])} "
                    f"| {c['val_macro_miou']:.3f} | {_diff(vs.get('macro_miou')) if c['recipe'] != BASELINE else 'baseline'} "
                    f"| {_diff(vs.get('micro_iou')) if c['recipe'] != BASELINE else 'baseline'} |")  # fmt: skip
    return "\n".join(rows)


def per_class_table(summary: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Markdown table of the paired per-class test IoU gain over real of each fraction's headline
    recipe (rows: classes, columns: fractions), and notes on the classes or seeds skipped because
    their IoU is missing or NaN (a class absent from the test split)."""
    cols, notes = [], []
    for h in summary["headline"]:
        c = cell(summary, h["fraction"], h["recipe"]) if h["recipe"] else None
        if c is None or c["vs_real"] is None:
            continue
        cols.append((f"{pct(c['fraction'])}: real + {c['recipe']}", c["per_class_gain"]))
        notes += [f"{pct(c['fraction'])}, {c['recipe']}: {n}" for n in c["per_class_notes"]]
    classes = list(dict.fromkeys(k for _, g in cols for k in g))
    if not classes:
        return "", notes
    lvl = f"{100 * summary['level']:g}%"
    rows = ["| class | " + " | ".join(f"{name} [{lvl} CI]" for name, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for k in classes:
        rows.append(f"| {k} | " + " | ".join(_diff(g.get(k)) if k in g else "skipped" for _, g in cols) + " |")
    return "\n".join(rows), notes


# ---- plot -----------------------------------------------------------------------------------


def learning_curve_plot(doc: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> bytes:
    """PNG: test macro mIoU against label fraction, one line per recipe, the t interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from terrasynth.report.build import _png

    s = summary or learning_curve_summary(doc)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in s["recipes"]:
        cs = [c for c in s["cells"] if c["recipe"] == r]
        xs = np.array([c["fraction"] for c in cs])
        m = np.array([c["test_macro_miou"]["mean"] for c in cs])
        lo = np.array([c["test_macro_miou"]["lo"] for c in cs])
        hi = np.array([c["test_macro_miou"]["hi"] for c in cs])
        label = "real only" if r == BASELINE else f"real + {r}"
        (line,) = ax.plot(xs, m, marker="o", label=label)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.sum() >= 2:
            ax.fill_between(xs[ok], lo[ok], hi[ok], color=line.get_color(), alpha=0.18, linewidth=0)
        elif ok.any():  # a band needs two x values; one point gets an error bar
            ax.errorbar(
                xs[ok], m[ok], yerr=[m[ok] - lo[ok], hi[ok] - m[ok]], fmt="none", ecolor=line.get_color(), capsize=4
            )
    if len(s["fractions"]) > 2:
        ax.set_xscale("log")
    ax.set_xticks(s["fractions"], [pct(f) for f in s["fractions"]])
    ax.minorticks_off()
    ax.set_xlabel("fraction of the real training labels")
    ax.set_ylabel("macro mIoU on real test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Scarce labels: mean over seeds, {100 * s['level']:g}% CI band")
    return _png(fig)
