"""Plots and sample grids of a report: each layout column against the swept threat parameter
(``report_<metric>.png``), a defence sweep's privacy-utility figure (``report_privacy_utility.png``),
and the runs' sample images side by side (``report_grid[_<table>].png``, its column names in
``.txt``, and a titled ``_figure.png``).
"""

from __future__ import annotations

import io
import re
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from reconattack.report.runs import distinguish, with_overrides
from reconattack.report.tables import ARROWS, Report, Series, privacy_utility
from reconattack.utils.files import atomic_write_bytes, atomic_write_text
from reconattack.utils.grids import GRID_PAD

# ------------------------------------------------------------------------------ plots

def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (servers have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _plot_name(metric: str) -> str:
    return "report_" + metric.replace("/", "_").replace("@", "_at_") + ".png"


def write_plots(report: Report) -> list[Path]:
    plt = _pyplot()
    series = report.series or _fallback_series(report)
    if not series:
        return []
    layout = report.layout
    directions = dict(layout.columns) if layout else {}
    out = []
    for metric, lines in series.items():
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        ticks = sorted({p[0] for s in lines for p in s.points})
        for s in lines:
            xs = [p[0] for p in s.points]
            ax.errorbar(xs, [p[1] for p in s.points], yerr=[p[2] or 0.0 for p in s.points],
                        marker="o" if s.attack else None, linestyle="-" if s.attack else "--",
                        capsize=3, label=s.label if report.series else None, alpha=1.0 if s.attack else 0.7)
        if ticks[0] > 0 and ticks[-1] / ticks[0] >= 10 and not report.x_labels:
            ax.set_xscale("log")
        ax.set_xticks(ticks, [report.x_labels.get(x, f"{x:g}") for x in ticks])
        ax.minorticks_off()
        # the layout column: a run metric is one (utility/h_acc@3); else the row's prefix off
        # (test/retrieval/hog/rank1: retrieval/hog/rank1, not just rank1)
        col = metric if metric in directions else metric.split("/", 1)[-1]
        arrow = ARROWS.get(directions.get(col, ""), "")
        ax.set_xlabel(layout.sweep_label if report.series else lines[0].label)
        ax.set_ylabel(f"{metric} {arrow}".strip())
        if report.series:
            ax.set_title(f"{layout.title}: {col} against {layout.sweep_label}", fontsize=9)
            # below the axes: long row labels would squeeze the plot beside it
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=1, frameon=False)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = report.root / _plot_name(metric)
        atomic_write_bytes(path, _png(fig))
        plt.close(fig)
        out.append(path)
    return out


def _fallback_series(report: Report) -> dict[str, list[Series]]:
    """Without a layout sweep: every metric against the one numeric override that varies between
    the settings, if there is exactly one (``Series.label``: that override)."""
    done = [g for g in report.groups if g.finished]
    keys = [g.keyed for g in done]
    varying = [k for k in dict.fromkeys(k for d in keys for k in d) if len({d.get(k) for d in keys}) > 1]
    if len(varying) != 1:
        return {}
    param = varying[0]
    try:
        xs = [float(d[param]) for d in keys]
    except (KeyError, ValueError):
        return {}
    out = {}
    for m in report.metrics:
        stats = [g.stats[m] for g in done]
        if m.startswith("artifacts/") or any(s.mean is None for s in stats):
            continue
        if len({s.mean for s in stats}) == 1 and not any(s.std for s in stats):
            continue  # constant over the swept value (e.g. the encrypted gallery's metrics)
        out[m] = [Series(param, sorted((x, s.mean, s.std, s.n) for x, s in zip(xs, stats)), True)]
    return out


# ------------------------------------------------------------------------------ privacy-utility

PRIVACY_UTILITY = "report_privacy_utility.png"


def write_privacy_utility(report: Report) -> list[Path]:
    """A defence sweep's privacy-utility figure (:func:`~reconattack.report.tables.privacy_utility`),
    ``report_privacy_utility.png``: a panel per leakage metric (the layout's ``privacy_utility.y``
    on the attack's row), utility (``privacy_utility.x``) on the horizontal axis; per attack
    setting one point per defence setting (means, error bars the std over seeds), joined in the
    sweep's order and each named by its value, the first setting (no defence, in a sweep that
    starts without one) a star; the controls' rows as horizontal dashed lines (their mean over the
    settings, with the band of their range when they differ) and the metric's chance, where the
    runs report one, dotted. Returns ``[path]``, or ``[]`` when the report is no defence sweep
    with the utility numbers."""
    panels = privacy_utility(report)
    if not panels:
        return []
    plt = _pyplot()
    layout = report.layout
    directions = dict(layout.columns)
    x_metric = layout.privacy_utility["x"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (leak, lines) in zip(axes[0], panels.items()):
        drawn_controls: set[str] = set()
        for k, line in enumerate(lines):
            colour = f"C{k}"
            xs = [u.mean for _, u, _ in line.points]
            ys = [v.mean for _, _, v in line.points]
            ax.errorbar(xs, ys, xerr=[u.std or 0.0 for _, u, _ in line.points],
                        yerr=[v.std or 0.0 for _, _, v in line.points], color=colour, marker="o", capsize=3,
                        label=line.label)
            first, u0, v0 = line.points[0]
            ax.plot([u0.mean], [v0.mean], marker="*", markersize=15, color=colour, linestyle="none",
                    label=f"first setting: {report.defence}={first}" + (f" ({line.label})" if len(lines) > 1 else ""))
            for text, u, v in line.points:
                ax.annotate(text, (u.mean, v.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
            for j, (label, values) in enumerate(line.controls):
                if label in drawn_controls and len(lines) > 1:
                    continue
                drawn_controls.add(label)
                lo, hi, mean = min(values), max(values), float(np.mean(values))
                style = dict(color=f"C{len(lines) + j}", linestyle="--", linewidth=1.0)
                varies = hi - lo > 1e-9 * max(1.0, abs(mean))  # not float noise
                ax.axhline(mean, **style, label=label + (" (mean of the settings; band: their range)" if varies else ""))
                if varies:
                    ax.axhspan(lo, hi, color=style["color"], alpha=0.12)
            if line.chance and k == 0:
                ax.axhline(float(np.mean(line.chance)), color="grey", linestyle=":", linewidth=1.0, label="chance")
        col = leak.split("/", 1)[-1]
        ax.set_xlabel(f"utility: {x_metric} {ARROWS.get(directions.get(x_metric, ''), '')}".strip())
        ax.set_ylabel(f"leakage: {leak} {ARROWS.get(directions.get(col, ''), '')}".strip())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=1, frameon=False)
    fig.suptitle(textwrap.fill(f"{layout.title}: leakage against utility over {layout.sweep_label}", 100), fontsize=9)
    fig.tight_layout()
    path = report.root / PRIVACY_UTILITY
    atomic_write_bytes(path, _png(fig))
    plt.close(fig)
    return [path]


# ------------------------------------------------------------------------------ ROC curves

def write_roc_plots(report: Report) -> list[tuple[Path, str]]:
    """Per setting, the ROC of every verification row of its first finished run that has them
    (``roc_<row>.csv``) in log-log axes: TPR against FAR, the attack's row solid, the others
    dashed, the smallest FAR the pairs measure (1 / impostor pairs) where each curve starts.
    Returns ``(path, caption)`` pairs (``report_roc.png``, or ``report_roc_<k>.png`` for the
    k-th setting of several)."""
    from reconattack.metrics.roc import read_rocs

    attack_row = report.layout.attack_row if report.layout else "test"
    drawn = []
    for g in report.groups:
        run = next((j for j in g.finished if any(j.dir.glob("roc_*.csv"))), None)
        if run is not None:
            drawn.append((g, run, read_rocs(run.dir)))
    if not drawn:
        return []
    plt = _pyplot()
    out = []
    for k, (g, run, curves) in enumerate(drawn):
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        for row, roc in sorted(curves.items(), key=lambda kv: (kv[0] != attack_row, kv[0])):
            keep = (roc["far"] > 0) & (roc["tpr"] > 0)  # log axes: the points off zero
            if not keep.any():
                continue
            ax.step(roc["far"][keep], roc["tpr"][keep], where="post", linestyle="-" if row == attack_row else "--",
                    linewidth=1.8 if row == attack_row else 1.0, label=row)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FAR (false accepts / impostor pairs)")
        ax.set_ylabel("TPR ↑")
        setting = g.setting or "(all)"
        ax.set_title(textwrap.shorten(f"ROC: {setting}, run {run.name}", 90), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        fig.tight_layout()
        path = report.root / ("report_roc.png" if len(drawn) == 1 else f"report_roc_{k}.png")
        atomic_write_bytes(path, _png(fig))
        plt.close(fig)
        out.append((path, f"{setting} (run {run.name}; its roc_<row>.csv files)"))
    return out


# ------------------------------------------------------------------------------ sample grids

def read_grid(run_dir: Path) -> tuple[dict[str, np.ndarray], tuple[int, int]] | None:
    """The tiles of a run's ``samples/test_grid.png`` (names from the first line of
    ``test_grid.txt``, the tile size ``tile: HxW`` from its second; runs written before it had
    square tiles): ``({column: (rows, H, W, 3) uint8}, (H, W))``, or None when absent or not a
    grid of such tiles."""
    from PIL import Image

    png, txt = run_dir / "samples" / "test_grid.png", run_dir / "samples" / "test_grid.txt"
    if not (png.is_file() and txt.is_file()):
        return None
    lines = txt.read_text().strip().splitlines()
    names = [n.strip() for n in lines[0].split("|")]
    with Image.open(png) as im:
        img = np.asarray(im.convert("RGB"))
    h, w = img.shape[:2]
    tw = (w - GRID_PAD) / len(names) - GRID_PAD
    tile = re.fullmatch(r"tile:\s*(\d+)x(\d+)", lines[1].strip()) if len(lines) > 1 else None
    th = int(tile.group(1)) if tile else tw
    if tile and int(tile.group(2)) != tw:
        return None
    rows = (h - GRID_PAD) / (th + GRID_PAD) if tw > 0 else 0
    if tw != int(tw) or tw <= 0 or rows != int(rows) or rows < 1:
        return None
    th, tw, rows = int(th), int(tw), int(rows)
    cols = {}
    for j, name in enumerate(names):
        cols[name] = np.stack([img[GRID_PAD + i * (th + GRID_PAD):GRID_PAD + i * (th + GRID_PAD) + th,
                                   GRID_PAD + j * (tw + GRID_PAD):GRID_PAD + j * (tw + GRID_PAD) + tw]
                               for i in range(rows)])
    return cols, (th, tw)


def write_grids(report: Report) -> list[tuple[Path, list[str]]]:
    from PIL import Image

    layout = report.layout
    out = []
    if layout is None:
        return out
    for table in report.tables:
        for block in table.blocks:
            rows = [r for r in table.rows if r.kind == "attack" and block in r.groups]
            if len(rows) < 2:
                continue
            read = [(r, read_grid(r.groups[block].finished[0].dir)) for r in rows]
            read = [(r, g) for r, g in read if g is not None and layout.attack_row in g[0] and "target" in g[0]]
            where = " / ".join(v for v in (table.title, block) if v) or "all"
            if len(read) < 2:
                report.notes.append(f"{where}: no sample grid (fewer than two settings with "
                                    f"samples/test_grid.png and .txt)")
                continue
            first, size = read[0][1]
            n = min(report.options.grid_rows, *(len(g[0]["target"]) for _, g in read))
            if any(g[1] != size or not np.array_equal(g[0]["target"][:n], first["target"][:n]) for _, g in read):
                report.notes.append(f"{where}: no sample grid (the runs' sample images differ)")
                continue
            columns, titles = [first["target"][:n]], ["target"]
            for spec in layout.controls:  # those that depend on the attack: one per attack, not here
                tiles = None if spec["per_attack"] else first.get(spec["row"])
                if tiles is not None and not np.array_equal(tiles[:n], first["target"][:n]):
                    columns.append(tiles[:n])
                    titles.append(spec["label"])
            rename = {layout.sweep_key: layout.sweep_label} if layout.sweep_key else {}
            same_label = defaultdict(list)
            for r, _ in read:
                same_label[r.groups[block].label].append(r.groups[block])
            extra = {}
            for members in same_label.values():
                extra.update(distinguish([(id(g), g.keyed) for g in members], {id(g): g.config for g in members}))
            for r, (tiles, _) in read:
                g = r.groups[block]
                columns.append(tiles[layout.attack_row][:n])
                titles.append(with_overrides(g.label, extra[id(g)], rename))
            th, tw = size
            canvas = np.full((GRID_PAD + n * (th + GRID_PAD), GRID_PAD + len(columns) * (tw + GRID_PAD), 3),
                             255, np.uint8)
            for j, col in enumerate(columns):
                for i in range(n):
                    top, left = GRID_PAD + i * (th + GRID_PAD), GRID_PAD + j * (tw + GRID_PAD)
                    canvas[top:top + th, left:left + tw] = col[i]
            suffix = "".join("_" + re.sub(r"[^A-Za-z0-9.-]+", "_", v) for v in (*table.value, block) if v and v != "null")
            path = report.root / f"report_grid{suffix}.png"
            buf = io.BytesIO()
            Image.fromarray(canvas).save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
            atomic_write_text(path.with_suffix(".txt"), " | ".join(titles) + "\n")
            atomic_write_bytes(figure_path(path), _grid_figure(columns, titles, n))
            out.append((path, titles))
    return out


def figure_path(grid: Path) -> Path:
    return grid.with_name(f"{grid.stem}_figure.png")


def _grid_figure(columns: list[np.ndarray], titles: list[str], n: int) -> bytes:
    """The sample grid as a figure: a column per title (titled), ``n`` rows, tiles of any size
    drawn at about an inch each without smoothing. ``columns``: ``(>= n, H, W, 3)`` uint8."""
    plt = _pyplot()
    fig, axes = plt.subplots(n, len(columns), figsize=(1.1 * len(columns), 1.1 * n + 0.4), squeeze=False)
    for j, col in enumerate(columns):
        axes[0][j].set_title(textwrap.fill(titles[j], 16), fontsize=7)
        for i in range(n):
            axes[i][j].imshow(col[i], interpolation="nearest")
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
    fig.tight_layout(pad=0.3)
    try:
        return _png(fig)
    finally:
        plt.close(fig)
