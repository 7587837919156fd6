"""``terrasynth run``, ``terrasynth demo`` and ``terrasynth report``: the experiment end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from terrasynth.cli_base import CLI, add_config_args, out_dir

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def register(cli: CLI) -> None:
    p = cli.command("run", help="run (or resume) the whole pipeline from a config: data, generators, four datasets, cross-test, report")
    p.add_argument("config", metavar="CONFIG", help="pipeline YAML (see configs/: demo, dronedeploy, new-york) or a shipped name")
    p.add_argument("--out", type=out_dir, metavar="RUN", help="run directory (default: outputs/<config name>)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every later one")
    p.add_argument("--only", metavar="STAGE", help="run only this stage (its inputs must be cached)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=cmd_run)

    p = cli.command("demo", help="the whole pipeline on the embedded procedural world at 64x64 on CPU (about 15 minutes on 2 cores)")
    p.add_argument("--out", type=out_dir, default="outputs/demo", metavar="DIR")
    add_config_args(p)
    p.set_defaults(func=cmd_demo, config=None)

    p = cli.command("report", help="(re)build the HTML + markdown report of a pipeline run; "
                    "'report learning-curve FILE' prints the scarce-label table and verdict of a learning_curve.json")  # fmt: skip
    # `report RUN` predates the learning-curve form; argparse cannot put sub-commands beside a positional,
    # so the literal word 'learning-curve' followed by a FILE selects it.
    p.add_argument("run", metavar="RUN", help="a pipeline run directory, or the word 'learning-curve'")
    p.add_argument("file", nargs="*", metavar="FILE",
                   help="with 'learning-curve': the learning_curve.json to summarise; several are pooled into one "
                        "(more seeds of the same experiment from another folder or machine)")  # fmt: skip
    p.add_argument("--merged", metavar="FILE", help="learning-curve: also write the pooled learning_curve.json here (a new file)")
    p.add_argument("--out", type=out_dir, metavar="DIR", help="default: RUN/report")
    p.add_argument("--target", type=float, default=0.05, metavar="GAIN",
                   help="learning-curve: target gain in test macro mIoU at the smallest fraction (default 0.05)")  # fmt: skip
    p.set_defaults(func=cmd_report)


def resolve_config(name_or_path: str) -> Path:
    from terrasynth.errors import UserError

    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
    raise UserError(f"config {name_or_path!r} not found; pass a YAML path or one of {names}")


def _run(config: Path, out: str | Path, sets: list[str], from_stage: str | None, only: str | None) -> int:
    import json

    from terrasynth.config import load_config
    from terrasynth.pipeline import PipelineConfig, run_pipeline, timing_table

    cfg = load_config(PipelineConfig, config, sets=sets)
    state = run_pipeline(cfg, out, from_stage=from_stage, only=only)
    print(timing_table(state))
    ev = state["outputs"].get("evaluate")
    if ev:
        md = Path(ev["matrix"]).with_suffix(".md")
        print(md.read_text())
        ratios = json.loads(Path(ev["matrix"]).read_text()).get("transfer_ratios", {})
        for t, d in ratios.items():
            print(f"synthetic->real / real->real micro IoU, {t}: " + ", ".join(f"{a} {v:.2f}" for a, v in d.items()))
    rep = state["outputs"].get("report")
    if rep:
        print(f"report: {rep['html']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    return _run(config, args.out or Path("outputs") / config.stem, args.sets, args.from_stage, args.only)


def cmd_demo(args: argparse.Namespace) -> int:
    config = Path(args.config) if args.config else resolve_config("demo")
    return _run(config, args.out, args.sets, None, None)


def cmd_report(args: argparse.Namespace) -> int:
    from terrasynth.errors import UserError

    if args.run == LEARNING_CURVE and args.file:
        if args.out is not None:
            raise UserError("report learning-curve only prints; drop --out (the run's report holds the plot; "
                            "--merged FILE writes a pooled learning_curve.json)")  # fmt: skip
        return cmd_learning_curve(args.file, args.target, args.merged)
    if args.run == LEARNING_CURVE and not Path(args.run).is_dir():
        raise UserError("report learning-curve: missing FILE; e.g. terrasynth report learning-curve RUN/stages/scarce-*/learning_curve.json")
    if args.file:
        raise UserError(f"report {args.run} {' '.join(args.file)}: one RUN only; for a learning curve use "
                        "'terrasynth report learning-curve FILE'")  # fmt: skip
    if args.merged:
        raise UserError(f"report {args.run}: --merged goes with 'report learning-curve FILE FILE ...'; drop it")
    from terrasynth.report.build import build_report

    html, md = build_report(args.run, args.out)
    print(f"report: {html}\nmarkdown: {md}")
    return 0


LEARNING_CURVE = "learning-curve"


def cmd_learning_curve(paths: list[str], target: float, merged: str | None = None) -> int:
    """Recompute the scarce-label statistics from one or more ``learning_curve.json`` (pooled);
    prints, and writes only the pooled document when ``merged`` names a new file."""
    from terrasynth.errors import UserError
    from terrasynth.evaluate.stats import (learning_curve_summary, load_learning_curve, merge_learning_curves,
                                           per_class_table, summary_table, verdict)  # fmt: skip
    from terrasynth.io import ensure_dir, write_json_atomic

    if merged and Path(merged).exists():
        raise UserError(f"--merged {merged}: the file exists; name a new file (terrasynth does not overwrite it)")
    if merged and Path(merged).suffix != ".json":
        raise UserError(f"--merged {merged}: not a .json name; e.g. --merged pooled-learning_curve.json")
    docs = [(str(p), load_learning_curve(p)) for p in paths]
    doc = merge_learning_curves(docs) if len(docs) > 1 else docs[0][1]
    if merged:
        ensure_dir(Path(merged).parent)
        write_json_atomic(Path(merged), doc)
    summary = learning_curve_summary(doc)
    if len(docs) > 1:
        print(f"pooled {len(doc['points'])} points from {len(docs)} files")
    print(summary_table(summary))
    for note in summary["notes"]:
        print(f"note: {note}")
    table, skipped = per_class_table(summary)
    if table:
        print("\nPer-class gain in test IoU of the headline recipe over real alone:")
        print(table)
    for note in skipped:
        print(f"note: {note}")
    print()
    print("\n".join(verdict(summary, target)))
    return 0
