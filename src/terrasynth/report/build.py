"""The experiment report: one self-contained HTML page (images embedded) plus markdown.

Sections: cross-test matrix (heatmap + tables + synthetic/real transfer ratios), mixing
curves, the scarce-label learning curve (seed intervals, paired gains, verdict), sample grids (real LC | real image | SPADE | ControlNet | generated LC |
ControlNet on generated LC), image realism per generator (real vs synthetic test on the same masks, with a
grid mask | real | two samples), realism of generated land cover, timings, config, versions.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from terrasynth.data.dataset import Dataset
from terrasynth.data.preview import grid
from terrasynth.errors import UserError
from terrasynth.evaluate.stats import load_learning_curve
from terrasynth.experiments.matrix import ARCH_LABELS, DATASET_LABELS, Matrix
from terrasynth.io import ensure_dir, write_bytes_atomic, write_text_atomic

SECTIONS = ("matrix", "mixing", "scarce", "samples", "image_realism", "realism", "timings", "config", "versions")
GENERATOR_LABELS = {"controlnet": "ControlNet", "spade": "SPADE"}
VERSIONED = ("terrasynth", "torch", "diffusers", "segmentation-models-pytorch", "timm", "torchmetrics", "accelerate",
             "rasterio", "numpy")  # fmt: skip


def _png(fig_or_array: Any) -> bytes:
    buf = io.BytesIO()
    if isinstance(fig_or_array, np.ndarray):
        from PIL import Image

        Image.fromarray(fig_or_array).save(buf, format="PNG")
    else:
        import matplotlib.pyplot as plt

        fig_or_array.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig_or_array)
    return buf.getvalue()


def matrix_heatmap(matrix: Matrix, metric: str = "micro_iou") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(t, a) for t in matrix.train_sets for a in matrix.archs]
    vals = np.array([[(c.mean(metric) if (c := matrix.get(t, a, s)) else np.nan) for s in matrix.test_sets] for t, a in rows])
    fig, ax = plt.subplots(figsize=(1.6 * len(matrix.test_sets) + 3, 0.42 * len(rows) + 1.5))
    im = ax.imshow(vals, cmap="viridis", vmin=0, vmax=max(1e-6, float(np.nanmax(vals)) if np.isfinite(vals).any() else 1))
    ax.set_xticks(range(len(matrix.test_sets)), [f"test: {s}" for s in matrix.test_sets], rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), [f"{t} / {ARCH_LABELS.get(a, a)}" for t, a in rows])
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            if np.isfinite(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:.2f}", ha="center", va="center", color="w" if vals[i, j] < 0.5 * np.nanmax(vals) else "k")
    fig.colorbar(im, ax=ax, label=metric.replace("_", " "))
    ax.set_title(f"Cross-test {metric.replace('_', ' ')} (rows: training set / model)")
    return _png(fig)


def mixing_plot(points: list[dict[str, Any]], metric: str = "micro_iou") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for added in sorted({p["added"] for p in points}):
        by_r: dict[float, list[float]] = {}
        for p in points:
            if p["added"] == added:
                by_r.setdefault(p["fraction"], []).append(p[metric])
        xs = sorted(by_r)
        ys = [float(np.mean(by_r[x])) for x in xs]
        label = "real only" if added == "none" else f"real + {added}"
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("fraction of the real training set")
    ax.set_ylabel(f"{metric.replace('_', ' ')} on real test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Mixing real and synthetic training data")
    return _png(fig)


def scarce_section(doc: dict[str, Any], target: float = 0.05) -> list[tuple[str, Any]]:
    """The scarce-label section as ``("text", markdown)`` and ``("image", png)`` blocks, in order."""
    from terrasynth.evaluate.stats import learning_curve_plot, learning_curve_summary, pct, per_class_table, summary_table, verdict

    summary = learning_curve_summary(doc)
    setup = ", ".join(f"{k} {'none' if doc[k] is None else doc[k]}" for k in ("dataset", "arch", "encoder", "encoder_weights") if k in doc)
    blocks: list[tuple[str, Any]] = [
        ("text", f"Segmenters trained on a fraction of the real training labels, alone or with synthetic tiles ({setup}); "
                 f"recipes are chosen on {doc.get('selection_split', 'val')} and measured on {doc.get('metric_split', 'test')}."),
        ("text", "Recipes: " + "; ".join(f"{k} = {v}" for k, v in doc["recipes"].items()) + "."),
    ]  # fmt: skip
    if "labelled" in doc:
        lab = doc["labelled"]
        blocks.append(("text", "Labels: " + "; ".join(
            f"{pct(float(r))} = {v['labelled_sources']} of {v['train_sources']} train images ({v['labelled_train_tiles']} tiles"
            + (f", segmenters {v['segment_steps']} steps" if v.get("segment_steps") else "") + ")"
            for r, v in lab.items()) + f", chosen by source image with seed {doc.get('label_seed')}; val and test whole. "
            + ("Unlabelled train images were used by the ControlNet base (images need no labels)."
               if doc.get("unlabelled_images") else "No unlabelled imagery was used.")))  # fmt: skip
    if not summary["cells"]:
        return blocks + [("text", "learning_curve.json has no points yet.")]
    blocks += [
        ("image", learning_curve_plot(doc, summary)),
        ("text", "Bands: each recipe's own 95% t interval over seeds. Gains below are paired by seed (same real subset "
                 "and initialisation), so they are tighter than the bands' overlap suggests."),
        ("text", "Verdict"),
        *[("text", line) for line in verdict(summary, target)],
        ("text", "Per fraction and recipe (* = headline recipe, chosen on validation)"),
        ("text", summary_table(summary)),
    ]  # fmt: skip
    blocks += [("text", f"Note: {n}.") for n in summary["notes"]]
    table, notes = per_class_table(summary)
    if table:
        blocks += [("text", "Per-class gain in test IoU of the headline recipe over real alone"), ("text", table)]
    blocks += [("text", f"Note: {n}.") for n in notes]
    return blocks


def sample_grid(outputs: dict[str, Any], rows: int) -> np.ndarray | None:
    """Same map across a row: real LC | real image | SPADE | ControlNet | generated LC | ControlNet on it."""
    ds_out = outputs.get("datasets")
    if not ds_out:
        return None
    real = Dataset.open(ds_out["realrgbreallc"])
    spade = Dataset.open(ds_out["fakergbreallcspade"])
    cn = Dataset.open(ds_out["fakergbreallc"])
    fake = Dataset.open(ds_out["fakergbfakelc"])
    by_id = lambda d: {r.id: r for r in d.records}  # noqa: E731
    sp_ids, cn_ids = by_id(spade), by_id(cn)
    test = [r for r in real.split("test") if r.id in sp_ids and r.id in cn_ids]
    fake_test = fake.split("test") or fake.records
    step = max(1, len(test) // rows)
    panels = []
    for k, rec in enumerate(test[::step][:rows]):
        frec = fake_test[k % len(fake_test)]
        panels.append([
            real.scheme.colourize(real.read_label(rec)), real.read_image(rec),
            spade.read_image(sp_ids[rec.id]), cn.read_image(cn_ids[rec.id]),
            fake.scheme.colourize(fake.read_label(frec)), fake.read_image(frec),
        ])  # fmt: skip
    if not panels:
        return None
    return grid(panels, scale=max(1, 96 // real.info.tile_size))


def realism(outputs: dict[str, Any], n: int) -> dict[str, Any] | None:
    from terrasynth.evaluate.realism import realism_metrics

    ds_out, data_out = outputs.get("datasets"), outputs.get("data")
    if not ds_out or not data_out:
        return None
    real = Dataset.open(data_out.get("landcover_train", data_out["generator_train"]))
    gen = Dataset.open(ds_out["fakelc"])
    real_maps = np.stack([real.read_label(r) for r in real.records[:n]])
    gen_maps = np.stack([gen.read_label(r) for r in gen.records[:n]])
    return realism_metrics(real_maps, gen_maps, real.scheme)


def versions() -> dict[str, str]:
    out = {}
    for pkg in VERSIONED:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        out = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(d, float):
        return [(prefix, f"{d:.4g}")]
    if isinstance(d, list) and len(d) > 12:
        return [(prefix, f"[{len(d)} values]")]
    return [(prefix, str(d))]


def _md_table(rows: list[tuple[str, str]], head: tuple[str, str] = ("metric", "value")) -> str:
    return "\n".join([f"| {head[0]} | {head[1]} |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])


def _html_table_from_md(md: str) -> str:
    lines = [l for l in md.strip().splitlines() if l.startswith("|")]
    out = ["<table>"]
    for i, line in enumerate(lines):
        if i == 1:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def build_report(
    run: str | Path, out: str | Path | None = None, *, sample_rows: int = 6, realism_samples: int = 200,
    scarce_target: float = 0.05,
) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ PNGs) for a pipeline run."""
    run = Path(run)
    state_file = run / "pipeline.json"
    if not state_file.exists():
        raise UserError(f"{run}: no pipeline.json; pass the output directory of 'terrasynth run' or 'terrasynth demo'")
    state = json.loads(state_file.read_text())
    outputs = state.get("outputs", {})
    cfg = state.get("config") or ((run / "config.yaml").read_text() if (run / "config.yaml").exists() else "")
    cfg_text = cfg if isinstance(cfg, str) else json.dumps(cfg, indent=2)
    out = ensure_dir(out or run / "report")
    images: dict[str, bytes] = {}
    md: list[str] = [f"# terrasynth report: {state.get('name', run.name)}", ""]
    body: list[str] = [f"<h1>terrasynth report: {html.escape(str(state.get('name', run.name)))}</h1>"]

    def section(key: str, title: str) -> None:
        md.extend([f"## {title}", ""])
        body.append(f'<section id="{key}"><h2>{html.escape(title)}</h2>')

    def end() -> None:
        body.append("</section>")
        md.append("")

    def image(name: str, data: bytes, alt: str) -> None:
        images[name] = data
        md.extend([f"![{alt}]({name})", ""])
        body.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')

    def text_md(s: str) -> None:
        md.extend([s, ""])
        body.append(_html_table_from_md(s) if s.lstrip().startswith("|") else f"<p>{html.escape(s)}</p>")

    # -- matrix
    section("matrix", "Cross-test matrix")
    if "evaluate" in outputs:
        mj = json.loads(Path(outputs["evaluate"]["matrix"]).read_text())
        matrix = Matrix.from_results(
            [{"train_set": c["train_set"], "arch": c["arch"], "test_set": c["test_set"], "micro_iou": v, "macro_miou": w}
             for c in mj["cells"] for v, w in zip(c["micro_iou_values"], c["macro_miou_values"])],
            mj["train_sets"], mj["archs"], mj["test_sets"],
        )  # fmt: skip
        text_md("Datasets: " + "; ".join(f"{k} = {v}" for k, v in DATASET_LABELS.items()) + ". Mean over seeds (± std when several).")
        image("matrix_micro_iou.png", matrix_heatmap(matrix, "micro_iou"), "cross-test micro IoU heatmap")
        text_md("Micro IoU (rows: training set / model; columns: test set)")
        text_md(matrix.to_markdown("micro_iou"))
        text_md("Macro mIoU")
        text_md(matrix.to_markdown("macro_miou"))
        ratios = matrix.transfer_ratios()
        if ratios:
            text_md("IoU(train synthetic, test real) / IoU(train real, test real)")
            text_md(_md_table([(f"{t} / {ARCH_LABELS.get(a, a)}", f"{v:.3f}") for t, d in ratios.items() for a, v in d.items()],
                              ("training set / model", "ratio")))  # fmt: skip
    else:
        text_md("The evaluate stage has not run.")
    end()
    # -- mixing
    section("mixing", "Mixing real and synthetic data")
    points = outputs.get("mixing", {}).get("curves", [])
    if points:
        image("mixing.png", mixing_plot(points), "mixing curves")
        text_md(_md_table([(f"r={p['fraction']:g} + {p['added']} (seed {p['seed']})", f"{p['micro_iou']:.3f} / {p['macro_miou']:.3f}")
                           for p in points], ("training data", "micro IoU / macro mIoU on real test")))  # fmt: skip
    else:
        text_md("The mixing sweep is disabled or has not run.")
    end()
    # -- scarce labels
    section("scarce", "Scarce labels: does synthetic data help?")
    lc_path = outputs.get("scarce", {}).get("learning_curve")
    if not lc_path:
        text_md("The scarce-label experiment is disabled or has not run.")
    elif not Path(lc_path).is_file():
        text_md(f"The scarce stage lists {lc_path}, which is missing; rerun with --from scarce.")
    else:
        for kind, content in scarce_section(load_learning_curve(lc_path), scarce_target):
            if kind == "image":
                image("learning_curve.png", content, "learning curve: test macro mIoU against label fraction")
            else:
                text_md(content)
    end()
    # -- samples
    section("samples", "Samples")
    g = sample_grid(outputs, sample_rows)
    if g is not None:
        text_md("Columns: real land cover | real image | SPADE | ControlNet | generated land cover | ControlNet on generated land cover (test split).")
        image("samples.png", _png(g), "sample grid")
    else:
        text_md("No synthetic datasets yet.")
    end()
    # -- image realism
    section("image_realism", "Image realism: real vs synthetic test images on the same masks")
    measured = outputs.get("evaluate", {}).get("realism", {})
    found = {g: json.loads(Path(v["json"]).read_text()) for g, v in measured.items() if Path(v["json"]).is_file()}
    if found:
        from terrasynth.evaluate.image_realism import headline

        write_text_atomic(out / "image_realism.json", json.dumps(found, indent=2))
        heads = {g: headline(r) for g, r in found.items()}
        text_md("Features of the segmenter trained on the real data; the floor is real train vs real test at the same "
                "sample size (a ratio near 1: no more distinguishable than two real samples). Laplacian ratio below 1: "
                "smoother than real. FID/KID need torchvision's Inception v3 weights in its cache ($TORCH_HOME/hub/checkpoints). "
                "Full tables: image_realism.json.")  # fmt: skip
        rows = [f"| {k} | {' | '.join(h.get(k, '') for h in heads.values())} |" for k in next(iter(heads.values()))]
        labels = " | ".join(GENERATOR_LABELS.get(g, g) for g in heads)
        text_md("\n".join([f"| metric | {labels} |", "|---" * (len(heads) + 1) + "|", *rows]))
        for g, v in measured.items():
            if Path(v["grid"]).is_file():
                label = GENERATOR_LABELS.get(g, g)
                text_md(f"{label}: one test mask per row; columns: mask | real image | two samples.")
                image(f"samples-{g}.png", Path(v["grid"]).read_bytes(), f"{label} sample grid")
    else:
        text_md("Not measured: the evaluate stage has not run, or ran before image realism was part of it "
                "(rerun with --from evaluate).")  # fmt: skip
    end()
    # -- realism
    section("realism", "Realism of generated land cover")
    try:
        rm = realism(outputs, realism_samples)
    except UserError as exc:
        rm = {"error": str(exc)}
    text_md(_md_table(_flatten(rm)) if rm else "The land-cover generator has not run.")
    end()
    # -- timings
    section("timings", "Timings")
    text_md(_md_table([(k, f"{v['seconds']:.1f} s ({v['status']})") for k, v in state.get("stages", {}).items()], ("stage", "wall time")))
    end()
    # -- config & versions
    section("config", "Configuration")
    md.extend(["```yaml", cfg_text, "```", ""])
    body.append(f"<pre>{html.escape(cfg_text)}</pre>")
    end()
    section("versions", "Versions")
    text_md(_md_table(list(versions().items()), ("package", "version")))
    end()

    for name, data in images.items():
        write_bytes_atomic(out / name, data)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, "\n".join(md))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "img{max-width:100%;display:block;margin:1em 0}pre{background:#f5f5f5;padding:1em;overflow:auto}")  # fmt: skip
    # After load, the page records how many of its images decoded (read by the browser test).
    check = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.setAttribute('data-images-loaded',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length)});</script>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>terrasynth report</title><style>{style}</style>"
            f"</head><body>{''.join(body)}{check}</body></html>")
    write_text_atomic(html_path, page)
    return html_path, md_path
