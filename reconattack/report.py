"""Paper-style tables from runs: ``python -m reconattack.report DIR``.

Collects every ``metrics.json`` below ``DIR`` (a run or a multirun directory), groups the runs
by their Hydra overrides without ``seed``, and writes into ``DIR``:

- ``report.md`` and ``report.csv``: one row per group, ``mean ± std`` over seeds (std over
  runs with ddof=1; a single run shows its value), with the number of runs;
- ``report_<metric>.png``: when exactly one override varies across groups and it is numeric
  (e.g. ``attack.key_share``), the metric against it with error bars.

Metrics reported as missing are shown as ``missing`` in the tables, with each distinct reason
listed once below them.

The paper layout comes from the runs' own configs (``.hydra/config.yaml``), never from code that
names an attack: the threat model's ``report`` section says which metrics prefix holds the
attack's reconstructions, which rows its controls are and how they are labelled, and the columns
with the better direction (↑ / ↓); ``attack.label`` names the attack's rows. One row per setting
(the overrides that differ between groups, e.g. the attack or the key share), then the controls
(once when they do not depend on the attack, else per setting).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

from reconattack.errors import InputNotFoundError
from reconattack.utils.files import atomic_write_text

MAIN_METRICS = ("test/psnr", "test/ssim", "test/fid", "test/lpips", "test/clip")
MISSING = "missing: "
ARROWS = {"higher": "↑", "lower": "↓"}


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
        cfile = run_dir / ".hydra" / "config.yaml"
        config = yaml.safe_load(cfile.read_text()) if cfile.is_file() else {}
        runs.append({"dir": run_dir, "overrides": overrides, "config": config or {},
                     "metrics": json.loads(mfile.read_text())})
    if not runs:
        raise InputNotFoundError(f"no metrics.json below {root}; give a run or multirun directory")
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


def _layout(groups: dict) -> tuple[dict, dict[tuple, str]] | tuple[None, None]:
    """The threat's report layout (from the first run that has one) and each group's attack label."""
    layout = None
    labels = {}
    for key, runs in groups.items():
        config = runs[0]["config"]
        layout = layout or (config.get("threat") or {}).get("report")
        attack = config.get("attack") or {}
        labels[key] = str(attack.get("label") or attack.get("name") or "attack")
    return (layout, labels) if layout else (None, None)


def _paper_table(groups: dict, rows: list[dict], reasons: dict) -> list[str]:
    """The paper's layout of the threat's results (see the module docstring), or []."""
    layout, labels = _layout(groups)
    if layout is None:
        return []
    keys = list(groups)
    varying = sorted({k for key in keys for k, v in key
                      if len({dict(g).get(k) for g in keys}) > 1} - {"attack"})

    def setting(key) -> str:
        d = dict(key)
        return ", ".join(f"{k}={d[k]}" for k in varying if k in d)

    cols = list(layout.get("columns") or {})
    head = [f"{c} {ARROWS.get(str(layout['columns'][c]), '')}".strip() for c in cols]
    md = ["", "## Paper layout", "", "| row | " + " | ".join(head) + " |", "|" + " --- |" * (len(cols) + 1)]

    def line(label: str, row: dict, prefix: str) -> str:
        cells = [_cell(row.get(f"{prefix}/{c}", {"text": ""})["text"], reasons) for c in cols]
        return f"| {label} | " + " | ".join(cells) + " |"

    attack_row = str(layout.get("attack_row", "test"))
    for key, row in zip(keys, rows):
        if any(f"{attack_row}/{c}" in row for c in cols):
            extra = setting(key)
            md.append(line(labels[key] + (f" ({extra})" if extra else ""), row, attack_row))
    for spec in (layout.get("controls") or {}).values():
        prefix, label = str(spec["row"]), str(spec.get("label", spec["row"]))
        present = [(key, row) for key, row in zip(keys, rows) if any(f"{prefix}/{c}" in row for c in cols)]
        if not present:
            continue
        texts = {tuple(row.get(f"{prefix}/{c}", {"text": ""})["text"] for c in cols) for _, row in present}
        if not spec.get("per_attack") and len(texts) == 1:
            md.append(line(label, present[0][1], prefix))
            continue
        for key, row in present:
            who = labels[key] if spec.get("per_attack") else ""
            extra = ", ".join(x for x in (who, setting(key)) if x)
            md.append(line(f"{label} ({extra})" if extra else label, row, prefix))
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
    md += _paper_table(groups, rows, reasons)
    if reasons:
        md += ["", "Missing metrics (no pretrained weights):", ""] + [f"- {r}" for r in reasons]
    atomic_write_text(root / "report.md", "\n".join(md) + "\n")
    with io.StringIO(newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "runs"] + [c for m in metrics for c in (f"{m} mean", f"{m} std")])
        for row in rows:
            w.writerow([row["setting"], row["runs"]] + [
                c for m in metrics for c in ((row[m]["mean"], row[m]["std"]) if row[m]["mean"] is not None
                                             else (row[m]["text"], ""))])
        atomic_write_text(root / "report.csv", f.getvalue())
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


class ReportCallback(Callback):
    """Hydra callback (``hydra.callbacks``) that writes the report of a multirun when it ends, so
    an experiment that sweeps (e.g. ``demo_sift_baselines``) prints one table."""

    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(str(config.hydra.sweep.dir))
        try:
            write_reports(root)
        except FileNotFoundError as exc:
            print(f"report: {exc}")
            return
        print((root / "report.md").read_text())
        print(f"report written to {root / 'report.md'}")


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
