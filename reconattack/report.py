"""Paper-style tables from runs: ``python -m reconattack.report DIR``.

Collects every ``metrics.json`` below ``DIR`` (a run or a multirun directory), groups the runs
by their Hydra overrides without ``seed``, and writes into ``DIR``:

- ``report.md`` and ``report.csv``: one row per group, ``mean ± std`` over seeds (std over
  runs with ddof=1; a single run shows its value), with the number of runs;
- ``report_<metric>.png``: when exactly one override varies across groups and it is numeric
  (e.g. ``attack.key_share``), the metric against it with error bars.

Metrics reported as missing are shown as ``missing`` in the tables, with each distinct reason
listed once below them. AVIH runs (``<row>/<metric>`` keys) also get the paper's layout (Tables
I-II): one ``ours`` row per setting, then Original / Protected / Key model / Random.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

MAIN_METRICS = ("test/psnr", "test/ssim", "test/fid", "test/lpips", "test/clip")
MISSING = "missing: "
AVIH_ROWS = ("original", "protected", "key_model", "random")
AVIH_METRICS = ("tpr@far", "mse", "lpips", "psnr", "clip", "ssim")  # paper column order


def load_runs(root: Path) -> list[dict]:
    """Each run below ``root``: ``{"dir", "overrides": {key: value}, "metrics": {...}}``."""
    runs = []
    for mfile in sorted(root.rglob("metrics.json")):
        run_dir = mfile.parent
        overrides = {}
        ofile = run_dir / ".hydra" / "overrides.yaml"
        if ofile.is_file():
            for item in yaml.safe_load(ofile.read_text()) or []:
                key, _, value = str(item).partition("=")
                overrides[key.lstrip("+~")] = value
        runs.append({"dir": run_dir, "overrides": overrides, "metrics": json.loads(mfile.read_text())})
    if not runs:
        raise FileNotFoundError(f"no metrics.json below {root}; give a run or multirun directory")
    return runs


def group_runs(runs: list[dict], ignore: tuple[str, ...] = ("seed", "hydra.run.dir", "hydra.sweep.dir")) -> dict:
    groups = defaultdict(list)
    for r in runs:
        key = tuple(sorted((k, v) for k, v in r["overrides"].items() if k not in ignore))
        groups[key].append(r)
    return dict(groups)


def summarise(values: list) -> tuple[float | None, float | None, str]:
    """(mean, std, text) of numbers; strings (missing metrics) are passed through as text."""
    nums = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not nums:
        return None, None, str(values[0]) if values else ""
    mean = statistics.fmean(nums)
    std = statistics.stdev(nums) if len(nums) > 1 else 0.0
    text = f"{mean:.4f} ± {std:.4f}" if len(nums) > 1 else f"{mean:.4f}"
    return mean, std, text


def build_table(groups: dict) -> tuple[list[str], list[dict]]:
    metric_names = sorted({k for runs in groups.values() for r in runs for k in r["metrics"]},
                          key=lambda k: (k not in MAIN_METRICS, MAIN_METRICS.index(k) if k in MAIN_METRICS else 0, k))
    rows = []
    for key, runs in groups.items():
        row = {"setting": ", ".join(f"{k}={v}" for k, v in key) or "(defaults)", "runs": len(runs)}
        for m in metric_names:
            mean, std, text = summarise([r["metrics"][m] for r in runs if m in r["metrics"]])
            row[m] = {"mean": mean, "std": std, "text": text}
        rows.append(row)
    return metric_names, rows


def _cell(text: str, reasons: dict) -> str:
    if text.startswith(MISSING):
        reasons.setdefault(text[len(MISSING):], None)
        return "missing"
    return text


def _avih_table(metrics: list[str], rows: list[dict], reasons: dict) -> list[str]:
    """The paper's Tables I-II layout when the runs are AVIH attacks, else []."""
    cols = [m for m in AVIH_METRICS if f"ours/{m}" in metrics]
    if not cols:
        return []
    md = ["", "## Attack rows (paper Tables I-II)", "",
          "| row | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for row in rows:
        md.append(f"| ours ({row['setting']}) | "
                  + " | ".join(_cell(row[f"ours/{m}"]["text"], reasons) for m in cols) + " |")
    for name in AVIH_ROWS:  # independent of the attack settings: from the first group
        if f"{name}/{cols[0]}" in metrics:
            md.append(f"| {name} | " + " | ".join(_cell(rows[0].get(f"{name}/{m}", {"text": ""})["text"], reasons)
                                                   for m in cols) + " |")
    return md


def write_reports(root: Path) -> list[Path]:
    runs = load_runs(root)
    groups = group_runs(runs)
    metrics, rows = build_table(groups)
    written = []
    reasons: dict = {}
    md = ["| setting | runs | " + " | ".join(metrics) + " |", "|" + " --- |" * (len(metrics) + 2)]
    for row in rows:
        md.append(f"| {row['setting']} | {row['runs']} | "
                  + " | ".join(_cell(row[m]["text"], reasons) for m in metrics) + " |")
    md += _avih_table(metrics, rows, reasons)
    if reasons:
        md += ["", "Missing metrics (no pretrained weights):", ""] + [f"- {r}" for r in reasons]
    (root / "report.md").write_text("\n".join(md) + "\n")
    with (root / "report.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "runs"] + [c for m in metrics for c in (f"{m} mean", f"{m} std")])
        for row in rows:
            w.writerow([row["setting"], row["runs"]] + [
                c for m in metrics for c in ((row[m]["mean"], row[m]["std"]) if row[m]["mean"] is not None
                                             else (row[m]["text"], ""))])
    written += [root / "report.md", root / "report.csv"]
    written += _plots(root, groups, metrics, rows)
    return written


def _plots(root: Path, groups: dict, metrics: list[str], rows: list[dict]) -> list[Path]:
    keys = [dict(k) for k in groups]
    varying = [k for k in set().union(*keys) if len({d.get(k) for d in keys}) > 1] if keys else []
    if len(varying) != 1:
        return []
    param = varying[0]
    try:
        xs = [float(d[param]) for d in keys]
    except (KeyError, ValueError):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    order = sorted(range(len(xs)), key=xs.__getitem__)
    for m in metrics:
        if m.startswith("artifacts/") or any(rows[i][m]["mean"] is None for i in order):
            continue
        if len({rows[i][m]["mean"] for i in order}) == 1 and not any(rows[i][m]["std"] for i in order):
            continue  # constant over the swept value (e.g. the encrypted gallery's metrics)
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.errorbar([xs[i] for i in order], [rows[i][m]["mean"] for i in order],
                    yerr=[rows[i][m]["std"] for i in order], marker="o", capsize=3)
        ax.set_xlabel(param)
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = root / f"report_{m.replace('/', '_').replace('@', '_at_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Paper-style tables (markdown, CSV) and plots from runs.")
    ap.add_argument("dir", type=Path, help="a run or multirun directory")
    args = ap.parse_args(argv)
    try:
        written = write_reports(args.dir)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    print((args.dir / "report.md").read_text())
    print("written: " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
