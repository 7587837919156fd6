"""Scarce-label statistics: t intervals, paired gains, val-chosen recipes, verdict wording, report section."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli
from scipy import stats as sps

from terrasynth.errors import UserError
from terrasynth.evaluate.stats import (
    best_recipe,
    cell,
    learning_curve_plot,
    learning_curve_summary,
    load_learning_curve,
    mean_ci,
    merge_learning_curves,
    paired_difference,
    per_class_table,
    summary_table,
    validate_learning_curve,
    verdict,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _point(fraction, recipe, seed, test, val=None, per_class=None):
    return {"fraction": fraction, "recipe": recipe, "seed": seed, "run": f"/runs/r{fraction}-{recipe}-s{seed}",
            "val": {"micro_iou": 0.5, "macro_miou": test if val is None else val},
            "test": {"micro_iou": test + 0.2, "macro_miou": test, "per_class_iou": per_class or {}}}  # fmt: skip


def _doc(gains: dict[str, list[float]], fractions=(0.1,), base=(0.40, 0.42, 0.38, 0.41, 0.39), headline=None):
    """Real-only runs at ``base`` per seed; each recipe adds its per-seed ``gains`` to them."""
    pts = []
    for f in fractions:
        pts += [_point(f, "real", s, b) for s, b in enumerate(base)]
        for r, g in gains.items():
            pts += [_point(f, r, s, base[s] + d) for s, d in enumerate(g)]
    recipes = {"real": "real tiles only (the baseline)", **{r: f"real + {r} tiles" for r in gains}}
    return {"dataset": "dronedeploy", "arch": "unet", "encoder": "resnet18", "encoder_weights": None,
            "selection_split": "val", "metric_split": "test", "headline_recipe": headline,
            "recipes": recipes, "points": pts}  # fmt: skip


# ---- intervals ------------------------------------------------------------------------------


def test_mean_ci_known_case():
    # mean 3, sd 1.5811, t(0.975, 4) = 2.7764 -> half width 2.7764 * 1.5811 / sqrt(5) = 1.9632
    mean, lo, hi = mean_ci([1, 2, 3, 4, 5])
    assert mean == pytest.approx(3.0)
    assert hi - mean == pytest.approx(1.9632, abs=1e-4) and mean - lo == pytest.approx(1.9632, abs=1e-4)
    # 90%: t(0.95, 4) = 2.1318 -> 1.5074
    _, lo90, _ = mean_ci([1, 2, 3, 4, 5], level=0.90)
    assert 3 - lo90 == pytest.approx(1.5074, abs=1e-4)


def test_mean_ci_one_value_is_no_interval():
    mean, lo, hi = mean_ci([0.42])
    assert mean == 0.42 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in mean_ci([]))


def test_paired_difference_known_case():
    a = {0: 0.50, 1: 0.60, 2: 0.70, 3: 0.65, 7: 0.9}
    b = {0: 0.45, 1: 0.58, 2: 0.60, 3: 0.64, 9: 0.1}  # seeds 7 and 9 are unpaired and ignored
    d = paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2, 3] and d["n"] == 4 and d["wins"] == 4
    # diffs 0.05, 0.02, 0.10, 0.01: mean 0.045, sd 0.040415, t = 2.2268 on 3 df -> p = 0.1124
    assert d["mean"] == pytest.approx(0.045)
    half = 3.182446 * 0.0404145 / 2
    assert (d["lo"], d["hi"]) == pytest.approx((0.045 - half, 0.045 + half), abs=1e-5)
    assert d["p_value"] == pytest.approx(0.1124, abs=5e-4)
    assert d["p_value"] == pytest.approx(sps.ttest_rel([0.5, 0.6, 0.7, 0.65], [0.45, 0.58, 0.6, 0.64]).pvalue)


def test_paired_difference_edge_cases():
    with pytest.raises(ValueError, match="no common seed"):
        paired_difference({0: 1.0}, {1: 1.0})
    one = paired_difference({3: 0.5}, {3: 0.4})
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.1)
    assert math.isnan(one["lo"]) and math.isnan(one["hi"]) and math.isnan(one["p_value"])
    same = paired_difference({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})  # every seed +0.1 exactly
    assert same["lo"] == pytest.approx(0.1) and same["hi"] == pytest.approx(0.1) and same["p_value"] == 0.0


# ---- choosing the recipe --------------------------------------------------------------------


def test_best_recipe_uses_val_not_test():
    doc = _doc({})
    doc["recipes"] |= {"lucky": "best on test", "sound": "best on val"}
    for s in range(3):
        doc["points"] += [_point(0.1, "lucky", s, test=0.60, val=0.40), _point(0.1, "sound", s, test=0.45, val=0.50)]
    assert best_recipe(doc, 0.1) == "sound"
    summary = learning_curve_summary(doc)
    assert summary["headline"] == [{"fraction": 0.1, "recipe": "sound", "chosen_by": "best mean val macro mIoU"}]
    assert "real + sound" in verdict(summary)[1]


def test_best_recipe_ties_go_to_declared_order_and_none_without_synthetic():
    doc = _doc({})
    doc["recipes"] |= {"second": "", "first": ""}  # declared order: second, then first
    doc["points"] += [_point(0.1, "first", 0, 0.5, val=0.5), _point(0.1, "second", 0, 0.4, val=0.5)]
    assert best_recipe(doc, 0.1) == "second"
    assert best_recipe(_doc({}), 0.1) is None
    assert best_recipe(doc, 0.5) is None  # nothing ran at that fraction


def test_declared_headline_recipe_wins_over_val():
    doc = _doc({"a": [0.1] * 5, "b": [0.0] * 5}, headline="b")
    for p in doc["points"]:
        if p["recipe"] == "a":
            p["val"]["macro_miou"] = 0.99
    h = learning_curve_summary(doc)["headline"][0]
    assert h["recipe"] == "b" and h["chosen_by"].startswith("declared")


def test_a_compute_control_is_never_the_headline_and_a_pretrain_recipe_is_measured_against_it():
    """``pretrain_on: real`` (real tiles twice) may score best on val, yet the headline is the best
    synthetic recipe, and a pretrain recipe's gain is split: over real, and over that control."""
    doc = _doc({"pre": [0.05, 0.06, 0.04, 0.07, 0.05], "ctl": [0.04, 0.04, 0.05, 0.05, 0.05]})
    doc["recipe_configs"] = {"pre": {"pretrain": True, "pretrain_on": "synthetic"}, "ctl": {"pretrain": True, "pretrain_on": "real"}}
    for p in doc["points"]:
        p["val"]["macro_miou"] = {"ctl": 0.9, "pre": 0.5}.get(p["recipe"], 0.4)
    assert best_recipe(doc, 0.1) == "pre"
    s = learning_curve_summary(doc)
    assert s["controls"] == ["ctl"] and cell(s, 0.1, "ctl")["vs_control"] is None
    vc = cell(s, 0.1, "pre")["vs_control"]
    assert vc["control"] == "ctl" and vc["macro_miou"]["mean"] == pytest.approx(0.054 - 0.046)
    assert vc["macro_miou"]["n"] == 5 and vc["macro_miou"]["lo"] < 0 < vc["macro_miou"]["hi"]
    lines = verdict(s)
    line = next(x for x in lines if "compute control ctl" in x)
    assert "pre differs by +0.008" in line and line.endswith("the synthetic images' own share is not measurable.")
    assert not any("recipes were tried" in x for x in lines)  # one synthetic recipe: the control is not one
    assert "| 10% | ctl (control) | 5 |" in summary_table(s)
    # a clear margin over the control is credited to the synthetic images
    for p in doc["points"]:
        if p["recipe"] == "ctl":
            p["test"]["macro_miou"] -= 0.03
    line = next(x for x in verdict(learning_curve_summary(doc)) if "compute control ctl" in x)
    assert "pre gains +0.038" in line and line.endswith("the synthetic images, not the extra phase, bought it.")


# ---- summary and verdict --------------------------------------------------------------------


def test_summary_cells():
    s = learning_curve_summary(_doc({"cn": [0.05, 0.07, 0.06, 0.08, 0.04]}, fractions=(0.1, 1.0)))
    assert s["fractions"] == [0.1, 1.0] and s["recipes"] == ["real", "cn"]
    real, cn = cell(s, 0.1, "real"), cell(s, 0.1, "cn")
    assert real["n"] == 5 and real["vs_real"] is None
    assert real["test_macro_miou"]["mean"] == pytest.approx(0.40)
    assert real["test_micro_iou"]["mean"] == pytest.approx(0.60)
    assert cn["vs_real"]["macro_miou"]["mean"] == pytest.approx(0.06)
    assert cn["vs_real"]["micro_iou"]["mean"] == pytest.approx(0.06)
    assert cn["val_macro_miou"] == pytest.approx(0.46)
    table = summary_table(s)
    assert table.count("\n") == 2 + 4 - 1 and "| 10% | cn * | 5 |" in table and "+0.060 [" in table


def test_verdict_helped():
    lines = verdict(learning_curve_summary(_doc({"cn": [0.05, 0.07, 0.06, 0.08, 0.04]})), target=0.05)
    helped = [line for line in lines if line.startswith("At 10% of the labels")]
    assert helped == [
        "At 10% of the labels, real + cn beats real alone by +0.060 macro mIoU (95% CI +0.040 to +0.080, 5 seeds, "
        "p=0.001, better in 5 of 5): synthetic data helped."
    ]
    target = [line for line in lines if line.startswith("Target")][0]
    assert "met on the mean only" in target and "by 0.010" in target and "lower bound +0.040" in target


def test_verdict_not_helped_and_target_missed():
    lines = verdict(learning_curve_summary(_doc({"cn": [0.03, -0.02, 0.01, 0.02, -0.01]})), target=0.05)
    assert any("did NOT measurably help (CI includes 0)" in line for line in lines)
    assert not any("helped." in line or "hurt" in line for line in lines)
    target = [line for line in lines if line.startswith("Target")][0]
    assert "NOT met" in target and "misses it by 0.044" in target  # mean gain +0.006


def test_verdict_hurt():
    lines = verdict(learning_curve_summary(_doc({"spade": [-0.05, -0.07, -0.06, -0.08, -0.04]})))
    assert any("is worse than real alone by -0.060" in line and line.endswith("synthetic data hurt.") for line in lines)
    assert any("NOT met" in line and "the whole CI is below the target" in line for line in lines)


def test_verdict_at_full_labels_judges_no_harm_and_the_synthetic_only_ratio():
    # real 0.40 on average; at 100%: cn -0.008 on average (under the -0.005 bar), cn-only at 0.8x real
    doc = _doc({"cn": [-0.006, -0.010, -0.008], "cn-only": [-0.08, -0.08, -0.08]}, fractions=(1.0,), base=(0.40, 0.42, 0.38))
    doc["recipe_configs"] = {"cn": {"synthetic_only": False}, "cn-only": {"synthetic_only": True}}
    for p in doc["points"]:  # make cn the headline on val
        p["val"]["macro_miou"] = {"cn": 0.5, "cn-only": 0.1}.get(p["recipe"], 0.3)
    lines = verdict(learning_curve_summary(doc))
    assert not any(line.startswith("Target (+0.050") for line in lines)  # the scarce-fraction target is not judged at 100%
    harm = [line for line in lines if line.startswith("Target at 100%")][0]
    assert "NOT met" in harm and "-0.008" in harm and "0.003 under the bar" in harm
    only = [line for line in lines if line.startswith("Target synthetic-only")][0]
    assert "NOT met, missed by 0.10" in only and "cn-only reaches 0.80x" in only
    # a recipe that adds a little meets the no-harm bar and says how much it adds
    doc2 = _doc({"cn": [0.01, 0.02, 0.0]}, fractions=(0.1, 1.0), base=(0.40, 0.42, 0.38))
    lines2 = verdict(learning_curve_summary(doc2))
    assert any(line.startswith("Target (+0.050 macro mIoU at 10% of the labels)") for line in lines2)
    assert any(line.startswith("Target at 100%") and "met: real + cn adds +0.010" in line for line in lines2)
    assert any(line.startswith("Target synthetic-only") and "cannot be judged" in line for line in lines2)


def test_verdict_one_seed_makes_no_claim():
    lines = verdict(learning_curve_summary(_doc({"cn": [0.2]}, base=(0.4,))))
    text = "\n".join(lines)
    assert "only one seed: no confidence interval, no claim" in text
    assert "helped" not in text and "hurt" not in text
    assert "cannot be judged with one seed" in text
    assert "(no CI)" in summary_table(learning_curve_summary(_doc({"cn": [0.2]}, base=(0.4,))))


def test_missing_baseline_seed_is_a_note_not_a_crash():
    doc = _doc({"cn": [0.05, 0.05]}, base=(0.4, 0.4))
    doc["points"] = [p for p in doc["points"] if p["recipe"] != "real"]
    s = learning_curve_summary(doc)
    assert cell(s, 0.1, "cn")["vs_real"] is None and "no 'real' run with the same seed" in s["notes"][0]
    assert any("no comparison, no claim" in line for line in verdict(s))


def test_runs_from_another_machine_kind_are_named_in_notes_and_verdict():
    doc = _doc({"cn": [0.05, 0.04, 0.06]}, base=(0.4, 0.41, 0.42))
    s = learning_curve_summary(doc)  # points from before machines were recorded: one kind, no words
    assert s["machines"] == {"not recorded": 6} and not any("machine" in line for line in verdict(s))
    xeon, epyc = "cpu: Intel Xeon (bf16), bf16", "cpu: AMD EPYC, no"
    for p in doc["points"]:
        p["machine"] = epyc if (p["seed"], p["recipe"]) == (2, "cn") else xeon
    validate_learning_curve(doc)
    s = learning_curve_summary(doc)
    assert s["machines"] == {xeon: 5, epyc: 1}
    assert any("cn: seed(s) [2] pair runs from different machines" in n for n in s["notes"])
    assert cell(s, 0.1, "cn")["vs_real"]["macro_miou"]["n"] == 3  # still paired: another realisation, kept
    line = next(line for line in verdict(s) if "machine kinds" in line)
    assert f"2 machine kinds or precisions ({xeon} (5 runs); {epyc} (1 run))" in line
    del doc["points"][0]["machine"]  # real seed 0: unrecorded, so no mixed pair, and counted apart
    s = learning_curve_summary(doc)
    assert not any("seed(s) [0]" in n for n in s["notes"]) and s["machines"] == {xeon: 4, epyc: 1, "not recorded": 1}
    assert "2 machine kinds" in " ".join(verdict(s)) and any(line.startswith("Runs without a recorded machine: 1 ") for line in verdict(s))
    doc["points"][0]["machine"] = 3
    with pytest.raises(UserError, match="machine 3 is not a string"):
        validate_learning_curve(doc)


def test_per_class_gain_skips_nan_and_absent_classes():
    doc = _doc({"cn": [0.0, 0.0, 0.0]}, base=(0.4, 0.4, 0.4))
    for p in doc["points"]:
        up = 0.1 if p["recipe"] == "cn" else 0.0
        road = float("nan") if (p["seed"] == 1 and p["recipe"] == "real") else 0.3 + up + 0.01 * p["seed"]
        p["test"]["per_class_iou"] = {"building": 0.5 + up * (p["seed"] + 1), "road": road, "water": None}
    c = cell(learning_curve_summary(doc), 0.1, "cn")
    assert set(c["per_class_gain"]) == {"building", "road"}
    assert c["per_class_gain"]["building"]["mean"] == pytest.approx(0.2)  # (0.1 + 0.2 + 0.3) / 3
    assert c["per_class_gain"]["road"]["n"] == 2 and c["per_class_gain"]["road"]["seeds"] == [0, 2]
    assert c["per_class_gain"]["road"]["mean"] == pytest.approx(0.1)
    assert any(n.startswith("water:") and "class skipped" in n for n in c["per_class_notes"])
    assert any(n.startswith("road:") and "1 of 3 seeds" in n for n in c["per_class_notes"])
    table, notes = per_class_table(learning_curve_summary(doc))
    assert "| building | +0.200 [" in table and "water" not in table and len(notes) == 2


# ---- the document ---------------------------------------------------------------------------


@pytest.mark.parametrize("break_it, words", [
    (lambda d: d["points"][0].update(recipe="dalle"), "recipe 'dalle'"),
    (lambda d: d["points"].append(dict(d["points"][0])), "duplicate point"),
    (lambda d: d["points"][0]["test"].update(macro_miou=float("nan")), "finite numbers"),
    (lambda d: d["points"][0].update(fraction=1.5), "fraction 1.5"),
    (lambda d: d["recipes"].pop("real"), "no 'real' baseline"),
    (lambda d: d.pop("points"), "'points'"),
])  # fmt: skip
def test_bad_documents_are_one_line_user_errors(break_it, words):
    doc = _doc({"cn": [0.1] * 5})
    break_it(doc)
    with pytest.raises(UserError, match=words):
        validate_learning_curve(doc)


def test_load_reads_nan_and_null(tmp_path):
    doc = _doc({"cn": [0.1] * 5})
    doc["points"][0]["test"]["per_class_iou"] = {"water": float("nan"), "road": None}
    path = tmp_path / "learning_curve.json"
    path.write_text(json.dumps(doc))
    assert load_learning_curve(path)["points"][0]["test"]["per_class_iou"]["road"] is None
    with pytest.raises(UserError, match="no such file"):
        load_learning_curve(tmp_path / "nope.json")


# ---- plot, report, CLI ----------------------------------------------------------------------


@pytest.mark.parametrize("fractions", [(0.1,), (0.1, 1.0), (0.05, 0.2, 1.0)])
def test_plot_is_png(fractions):
    assert learning_curve_plot(_doc({"cn": [0.05, 0.07, 0.06, 0.08, 0.04]}, fractions=fractions))[:8] == PNG
    assert learning_curve_plot(_doc({"cn": [0.05]}, base=(0.4,), fractions=fractions))[:8] == PNG  # no band


def _run_with_curve(tmp_path, doc):
    lc = tmp_path / "stages" / "scarce-abc" / "learning_curve.json"
    lc.parent.mkdir(parents=True)
    lc.write_text(json.dumps(doc))
    outputs = {"scarce": {"learning_curve": str(lc)}} if doc is not None else {}
    (tmp_path / "pipeline.json").write_text(json.dumps({"name": "scarce-test", "stages": {}, "outputs": outputs}))
    return tmp_path


def test_report_has_the_scarce_section(tmp_path):
    from terrasynth.report.build import build_report

    doc = _doc({"cn": [0.05, 0.07, 0.06, 0.08, 0.04], "spade": [0.0, 0.01, -0.01, 0.0, 0.0]}, fractions=(0.1, 1.0))
    for p in doc["points"]:
        p["test"]["per_class_iou"] = {"building": p["test"]["macro_miou"], "water": None}
    html, md = build_report(_run_with_curve(tmp_path, doc))
    text = md.read_text()
    assert "## Scarce labels: does synthetic data help?" in text
    assert "![learning curve" in text and (md.parent / "learning_curve.png").read_bytes()[:8] == PNG
    assert "| 10% | cn * | 5 |" in text and "| 100% | spade | 5 |" in text
    assert "At 10% of the labels, real + cn beats real alone by +0.060 macro mIoU" in text
    assert "| building | +0.060 [" in text and "water: IoU missing/NaN in every paired run" in text
    page = html.read_text()
    assert '<section id="scarce">' in page and page.count("<img ") == 1


def test_report_without_the_scarce_stage(tmp_path):
    from terrasynth.report.build import build_report

    (tmp_path / "pipeline.json").write_text(json.dumps({"name": "no-scarce", "stages": {}, "outputs": {}}))
    html, md = build_report(tmp_path)
    assert "The scarce-label experiment is disabled or has not run." in md.read_text()
    assert '<section id="scarce">' in html.read_text()


def test_cli_learning_curve_prints_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "learning_curve.json"
    path.write_text(json.dumps(_doc({"cn": [0.05, 0.07, 0.06, 0.08, 0.04]})))
    assert run_cli("report", "learning-curve", path) == 0
    out = capsys.readouterr().out
    assert "| 10% | cn * | 5 |" in out and "synthetic data helped." in out and "Target (+0.050" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learning_curve.json"]
    assert run_cli("report", "learning-curve", path, "--target", "0.01") == 0
    assert "met with confidence" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, "{not json", '{"recipes": {"real": ""}, "points": [{"fraction": 2}]}'])
def test_cli_learning_curve_bad_file(tmp_path, capsys, content):
    path = tmp_path / "lc.json"
    if content is not None:
        path.write_text(content)
    assert run_cli("report", "learning-curve", path) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err and "Traceback" not in err


def test_learning_curves_of_one_experiment_pool_into_one(tmp_path, capsys):
    """More seeds of the same experiment from another output folder (or machine) pool into one
    curve: the same summary as one file with every point; a run found in both counts once."""
    whole = _doc({"cn": [0.05, 0.07, 0.06, 0.08, 0.04]})
    a, b = dict(whole), dict(whole)
    a["points"] = [p for p in whole["points"] if p["seed"] < 3]
    b["points"] = [p for p in whole["points"] if p["seed"] >= 3 or (p["seed"], p["recipe"]) == (0, "real")]
    pa, pb, pooled = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "out" / "pooled.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    merged = merge_learning_curves([("a", a), ("b", b)])
    assert len(merged["points"]) == 10 and merged["merged_from"] == ["a", "b"]
    assert learning_curve_summary(merged)["cells"] == learning_curve_summary(whole)["cells"]
    assert run_cli("report", "learning-curve", pa, pb, "--merged", pooled) == 0
    out = capsys.readouterr().out
    assert "pooled 10 points from 2 files" in out and "| 10% | cn * | 5 |" in out
    assert load_learning_curve(pooled)["points"] == merged["points"]
    # the pooled file is never overwritten
    assert run_cli("report", "learning-curve", pa, pb, "--merged", pooled) == 2
    assert "the file exists" in capsys.readouterr().err


@pytest.mark.parametrize("break_it, words", [
    (lambda d: d["points"][0]["test"].update(macro_miou=0.9), r"real seed 0 at 10% scored 0.9000 test macro mIoU, "
                                                               r"0.4000 in a \(cpu: B, bf16 vs not recorded\); the same seed ran twice"),
    (lambda d: d.update(dataset="dubai"), "dataset 'dubai' differs"),
    (lambda d: d["recipe_configs"].update(cn={"variants": 3}), "recipe 'cn' has another config"),
    (lambda d: d["stages"]["0.1"].update(controlnet="c2"), "the controlnet stage at 0.1 of the labels is another one"),
    (lambda d: d.update(segment_config="s2"), "segment_config 's2' differs from 's1'"),
])  # fmt: skip
def test_pooling_refuses_what_is_not_one_experiment(tmp_path, capsys, break_it, words):
    a = _doc({"cn": [0.05, 0.07]}, base=(0.4, 0.41))
    a.update(recipe_configs={"cn": {"variants": 1}}, stages={"0.1": {"data": "d1", "controlnet": "c1"}}, segment_config="s1")
    b = json.loads(json.dumps(a))
    b["points"][0]["machine"] = "cpu: B, bf16"
    break_it(b)
    with pytest.raises(UserError, match=words):
        merge_learning_curves([("a", a), ("b", b)])
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert run_cli("report", "learning-curve", pa, pb, "--merged", tmp_path / "m.json") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(pb) in err and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("args, words", [
    (["learning-curve", "LC", "--out", "OUT"], "only prints; drop --out"),
    (["RUN", "LC"], "one RUN only"),
    (["RUN", "--merged", "M.json"], "--merged goes with"),
    (["learning-curve", "LC", "--merged", "M.txt"], "not a .json name"),
])  # fmt: skip
def test_report_misuse_is_a_one_line_error(tmp_path, capsys, args, words):
    lc = tmp_path / "lc.json"
    lc.write_text(json.dumps(_doc({"cn": [0.05, 0.07]}, base=(0.4, 0.41))))
    (tmp_path / "run").mkdir()
    subst = {"LC": lc, "OUT": tmp_path / "out", "RUN": tmp_path / "run", "M.json": tmp_path / "m.json", "M.txt": tmp_path / "m.txt"}
    assert run_cli("report", *[subst.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lc.json", "run"]
