"""Paper-style tables, plots and sample grids from runs: ``python -m reconattack.report DIR``.

``DIR`` is a run or a multirun directory. Every job below it (a directory with
``.hydra/overrides.yaml``, ``metrics.json`` or ``failed.txt``) is read; jobs are grouped by their
Hydra overrides without ``seed`` and ``resume`` (``--ignore KEY`` adds keys; ``hydra.*`` never
counts), and each group's metrics are averaged over its finished runs: mean ± sample std (ddof=1;
one run: its value) and the number of runs, ``(n=k)`` on a metric that fewer runs reported. Jobs
that failed (``failed.txt``) or did not finish (no ``metrics.json``) are listed, not dropped.
Written into ``DIR``:

- ``report.md``: the overrides common to all jobs; every metric per setting; the paper layout;
  the key-share answer; the plots and grids; the jobs without results; the reasons of metrics
  reported missing;
- ``report.csv`` (one row per setting: mean, std, n of every metric) and ``report_layout.csv``
  (the paper layout, long format, the paper's numbers included);
- ``report.tex``: the paper layout as booktabs tables (``\\usepackage{booktabs}``);
- ``report_<metric>.png``: each column of the layout against the swept threat parameter, with
  error bars (std over seeds), one line per table and setting (dataset, ablation), the controls
  dashed (without a layout: every metric against the one numeric override that varies, if any);
- ``report_grid[_<table>].png`` + ``.txt`` (the column names): the first ``--grid-rows`` images of
  the runs' ``samples/test_grid.png`` side by side: ground truth, the controls (those that differ
  from it and do not depend on the attack), then the attack at each setting (the first run of each), when a table has two or more,
  at the tiles' own pixels; ``report_grid[_<table>]_figure.png``: the same with column titles, for
  a paper (the one report.md shows).

The layout comes from the runs' own configs (``.hydra/config.yaml``), never from code that names
an attack or a threat: the threat's ``report`` section gives ``attack_row`` (metrics prefix of the
attack's reconstructions), ``controls`` (rows and labels; ``per_attack``: the control depends on
the attack), ``columns`` (metric -> ``higher`` | ``lower`` is better), ``tables_by`` /
``blocks_by`` (config keys: a table / a block of columns per value, e.g. ``data.name``),
``sweep`` (``{key, label}``: the swept threat parameter), ``threshold`` (the smallest swept value
at which the attack's ``metric`` exceeds the ``baseline`` control's by more than ``margin``, mean
over seeds of the per-run difference; ``count`` names the metric that says how many images that
is; ``--margin`` overrides the margin) and ``paper`` (a YAML file of the paper's published
numbers, relative to ``conf/``: each entry's ``match`` — dotted config keys and values — says
which runs it belongs beside; shown marked †, never mixed with ours). ``attack.label`` names the
attack's rows; a row shows, beside it, the overrides that tell it apart from the other rows of
the same label in its table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.experimental.callback import Callback

from reconattack.errors import ConfigError, InputNotFoundError, UserError
from reconattack.sweeps import FAILURE_FILE, job_path_key, job_status
from reconattack.utils.files import atomic_write_bytes, atomic_write_text

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MAIN_METRICS = ("test/psnr", "test/ssim", "test/fid", "test/lpips", "test/clip")
MISSING = "missing: "
ARROWS = {"higher": "↑", "lower": "↓"}
TEX_ARROWS = {"higher": r"$\uparrow$", "lower": r"$\downarrow$"}
DEFAULT_IGNORE = ("seed", "resume")
PAPER = "† paper"
GRID_PAD = 2  # torchvision's make_grid padding, as the runs' sample grids use

# ------------------------------------------------------------------------------ options


@dataclass
class Options:
    """What ``python -m reconattack.report`` takes besides the directory.

    Args:
        margin: the key-share question's margin (None: the threat's ``report.threshold.margin``).
        ignore: override keys averaged over (``hydra.*`` always is).
        digits: decimals of our numbers.
        grid_rows: images per sample grid.
        paper: the paper-numbers file (None: the threat's ``report.paper``; ``"none"``: none).
        wandb: also log the tables as W&B Tables when the jobs logged to W&B
            (:func:`reconattack.tracking.log_report_tables`).
    """

    margin: float | None = None
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    digits: int = 4
    grid_rows: int = 4
    paper: str | None = None
    wandb: bool = True

    def check(self) -> Options:
        if self.margin is not None and not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"--margin must be a number >= 0, got {self.margin}")
        if not 0 <= self.digits <= 12:
            raise ConfigError(f"--digits must be in 0..12, got {self.digits}")
        if self.grid_rows < 1:
            raise ConfigError(f"--grid-rows must be >= 1, got {self.grid_rows}")
        return self


# ------------------------------------------------------------------------------ numbers


@dataclass
class Stat:
    """One cell: ``mean``/``std`` of ``n`` numbers (std None below two), or only ``text`` (a
    metric reported missing, a non-number); ``runs``: the runs of its setting. A paper cell has
    ``paper=True`` and the paper's own text."""

    mean: float | None
    std: float | None
    n: int
    text: str
    runs: int = 0
    paper: bool = False

    def md(self) -> str:
        return "missing" if self.text.startswith(MISSING) else self.text.replace("|", "\\|")

    def tex(self, digits: int) -> str:
        if self.paper:
            return "$" + self.text.replace(" ± ", r" \pm ") + "$"
        if self.mean is None:
            return "missing" if self.text.startswith(MISSING) else (tex_escape(self.text) or "--")
        body = f"{self.mean:.{digits}f}" + (f" \\pm {self.std:.{digits}f}" if self.std is not None else "")
        return f"${body}$" + (f" ($n={self.n}$)" if self.n < self.runs else "")


EMPTY = Stat(None, None, 0, "")


def summarise(values: list, runs: int | None = None, digits: int = 4) -> Stat:
    """Mean ± sample std (ddof=1) of the finite numbers in ``values``; a metric reported as text
    (``missing: ...``) by every run keeps the first text. ``runs``: the runs of the setting
    (``(n=k)`` is added when fewer gave a number)."""
    nums = [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    runs = len(values) if runs is None else runs
    if not nums:
        texts = [str(v) for v in values if not isinstance(v, (int, float))]
        return Stat(None, None, 0, texts[0] if texts else "", runs)
    mean = statistics.fmean(nums)
    std = statistics.stdev(nums) if len(nums) > 1 else None
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    if len(nums) < runs:
        text += f" (n={len(nums)})"
    return Stat(mean, std, len(nums), text, runs)


def paper_stat(text: str) -> Stat:
    """A paper cell from its printed text, ``"0.612 ± 0.136"`` or ``"20.91"``."""
    parts = [p.strip() for p in str(text).split("±")]
    try:
        mean = float(parts[0])
        std = float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        mean = std = None
    return Stat(mean, std, 0, str(text), 0, paper=True)


# ------------------------------------------------------------------------------ jobs


@dataclass
class Job:
    """One run directory: its overrides (``key -> value``, ``+``/``~`` stripped), config,
    metrics (None unless finished) and status (``finished`` | ``failed`` | ``unfinished``)."""

    dir: Path
    name: str
    overrides: list[str]
    keyed: dict[str, str]
    config: dict
    metrics: dict | None
    status: str
    error: str | None


def _job_order(root: Path):
    """Jobs by the start of their multirun (its ``multirun.yaml``, written when Hydra launches it),
    so the sweeps of a recipe come in the order it ran them (the paper's row order), then by
    path with job numbers as numbers."""
    starts: dict[Path, int] = {}

    def start(p: Path) -> int:
        for d in (p, *p.parents):
            if not d.is_relative_to(root):
                break
            if d not in starts:
                f = d / "multirun.yaml"
                starts[d] = f.stat().st_mtime_ns if f.is_file() else -1
            if starts[d] >= 0:
                return starts[d]
        return 0

    def order(p: Path):
        return start(p), job_path_key(root, p)
    return order


def find_jobs(root: Path) -> list[Job]:
    """Every job below ``root`` (``root`` itself when it is one run), in job order."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root} does not exist or is not a directory; give a run or multirun directory")
    dirs = {p.parent for p in root.rglob("metrics.json")} | {p.parent for p in root.rglob(FAILURE_FILE)}
    dirs |= {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    if not dirs:
        raise InputNotFoundError(f"no run below {root} (no metrics.json, failed.txt or .hydra/); "
                                 f"give a run or multirun directory")
    jobs = []
    for d in sorted(dirs, key=_job_order(root)):
        st = job_status(d)
        keyed = {}
        for item in st["overrides"]:
            key, _, value = item.partition("=")
            keyed[key.lstrip("+~")] = value
        cfile = d / ".hydra" / "config.yaml"
        try:
            config = (yaml.safe_load(cfile.read_text()) if cfile.is_file() else None) or {}
        except yaml.YAMLError:
            config = {}
        metrics = None
        if st["status"] == "finished":
            try:
                metrics = json.loads((d / "metrics.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                st["status"], st["error"] = "unfinished", f"unreadable metrics.json: {exc}"
        name = str(d.relative_to(root)) if d != root else "."
        jobs.append(Job(d, name, st["overrides"], keyed, config if isinstance(config, dict) else {},
                        metrics, st["status"], st["error"]))
    return jobs


# ------------------------------------------------------------------------------ layout


def lookup(config: Any, key: str) -> Any:
    """``config`` at the dotted ``key`` (None when absent)."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b if isinstance(a, bool) and isinstance(b, bool) else False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def matches(config: dict, match: dict) -> bool:
    """True when ``config`` holds every dotted key of ``match`` with its value."""
    return all(_same(lookup(config, k), v) for k, v in match.items())


def _show(value: Any) -> str:
    """``value`` as a Hydra override writes it (``[a,b]``, ``true``, ``null``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value)


@dataclass
class Layout:
    """The threat's ``report`` section (see the module docstring)."""

    title: str
    attack_row: str
    controls: list[dict]
    columns: list[tuple[str, str]]
    tables_by: list[str]
    blocks_by: list[str]
    sweep: dict | None
    threshold: dict | None
    paper: str | None

    @classmethod
    def of(cls, config: dict) -> Layout | None:
        threat = config.get("threat") or {}
        spec = threat.get("report") if isinstance(threat, dict) else None
        if not isinstance(spec, dict):
            return None
        columns = []
        for col, direction in (spec.get("columns") or {}).items():
            if direction not in ARROWS:
                raise ConfigError(f"threat.report.columns.{col} must be higher or lower, got {direction!r}")
            columns.append((str(col), str(direction)))
        controls = [{"name": str(name), "row": str(c["row"]), "label": str(c.get("label", c["row"])),
                     "per_attack": bool(c.get("per_attack"))} for name, c in (spec.get("controls") or {}).items()]
        sweep = spec.get("sweep") or None
        if sweep is not None and not (isinstance(sweep, dict) and sweep.get("key")):
            raise ConfigError(f"threat.report.sweep must be null or {{key, label}}, got {sweep!r}")
        threshold = spec.get("threshold") or None
        if threshold is not None:
            missing = [k for k in ("metric", "baseline", "margin") if k not in threshold]
            if missing or sweep is None:
                raise ConfigError(f"threat.report.threshold needs metric, baseline, margin and a "
                                  f"threat.report.sweep, got {threshold!r}")
            if threshold["baseline"] not in {c["name"] for c in controls}:
                raise ConfigError(f"threat.report.threshold.baseline must be one of the controls "
                                  f"{[c['name'] for c in controls]}, got {threshold['baseline']!r}")
        as_list = lambda v: [str(k) for k in (v or [])]  # noqa: E731
        return cls(title=str(threat.get("label") or threat.get("name") or "Results"),
                   attack_row=str(spec.get("attack_row", "test")), controls=controls, columns=columns,
                   tables_by=as_list(spec.get("tables_by")), blocks_by=as_list(spec.get("blocks_by")),
                   sweep=dict(sweep) if sweep else None, threshold=dict(threshold) if threshold else None,
                   paper=spec.get("paper"))

    @property
    def sweep_key(self) -> str | None:
        return str(self.sweep["key"]) if self.sweep else None

    @property
    def sweep_label(self) -> str | None:
        return str(self.sweep.get("label") or self.sweep["key"]) if self.sweep else None


def load_paper(ref: str | None) -> dict | None:
    """The paper-numbers file ``ref`` (relative: under ``conf/``): ``{"source", "entries": [{"table",
    "row", "match", "values"}]}`` with the values as printed text; None for None / ``"none"``."""
    if ref is None or str(ref).lower() in ("none", "null", ""):
        return None
    path = Path(str(ref)).expanduser()
    path = path if path.is_absolute() else CONF_DIR / path
    if not path.is_file():
        raise InputNotFoundError(f"paper numbers file {path} does not exist (threat.report.paper or --paper; "
                                 f"--paper none leaves them out)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"paper numbers file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("match"), dict) and isinstance(e.get("values"), dict)
            and e.get("row") and e.get("table") for e in entries):
        raise ConfigError(f"paper numbers file {path} must hold source and entries: [{{table, row, match, values}}]")
    return {"source": str(data.get("source") or path.stem), "file": str(path),
            "entries": [{**e, "table": str(e["table"]), "row": str(e["row"]),
                         "values": {str(k): str(v) for k, v in e["values"].items()}} for e in entries]}


# ------------------------------------------------------------------------------ the report


@dataclass
class Group:
    """Jobs with the same overrides but for the ignored keys (seed)."""

    key: tuple[tuple[str, str], ...]
    jobs: list[Job]
    finished: list[Job]
    config: dict
    label: str
    setting: str = ""
    stats: dict[str, Stat] = field(default_factory=dict)
    x: float | None = None

    @property
    def keyed(self) -> dict[str, str]:
        return dict(self.key)


@dataclass
class Row:
    label: str
    kind: str  # attack | control | paper
    cells: dict[str, dict[str, Stat]] = field(default_factory=dict)  # block -> column -> cell
    groups: dict[str, Group] = field(default_factory=dict)  # block -> its group
    prefix: str = ""  # metrics prefix (attack_row or a control's row)
    of: str = ""  # paper rows: the label of the row they sit beside
    source: str = ""  # paper rows: "paper: <source>, <tables>"


@dataclass
class Table:
    title: str
    value: tuple
    blocks: list[str]
    columns: list[tuple[str, str]]
    rows: list[Row]
    groups: list[Group]
    paper_note: str = ""
    unreported: list[str] = field(default_factory=list)  # layout columns no row has: left out


@dataclass
class Series:
    label: str
    points: list[tuple[float, float, float | None, int]]  # (x, mean, std, n)
    attack: bool


@dataclass
class Answer:
    table: str
    attack: str
    series: str
    value: float | None
    count: Stat | None
    points: list[tuple[float, Stat]]
    below: tuple[float, Stat | None] | None


@dataclass
class Report:
    root: Path
    options: Options
    jobs: list[Job]
    groups: list[Group]
    common: list[str]
    metrics: list[str]
    layout: Layout | None
    tables: list[Table] = field(default_factory=list)
    series: dict[str, list[Series]] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    margin: float | None = None
    notes: list[str] = field(default_factory=list)


def _groups(jobs: list[Job], options: Options) -> tuple[list[Group], list[str]]:
    def ignored(k: str) -> bool:
        return k in options.ignore or k.startswith("hydra.")

    by_key: dict[tuple, list[Job]] = {}
    for job in jobs:
        key = tuple(sorted((k, v) for k, v in job.keyed.items() if not ignored(k)))
        by_key.setdefault(key, []).append(job)
    everyone = [j.keyed for j in jobs]
    common_keys = {k for k, v in everyone[0].items() if all(d.get(k) == v for d in everyone)} if everyone else set()
    common = [o for o in jobs[0].overrides if o.partition("=")[0].lstrip("+~") in common_keys] if jobs else []
    groups = []
    for key, members in by_key.items():
        finished = [j for j in members if j.status == "finished"]
        config = (finished or members)[0].config
        attack = config.get("attack") or {}
        label = str(attack.get("label") or attack.get("name") or "attack") if isinstance(attack, dict) else "attack"
        setting = ", ".join(f"{k}={v}" for k, v in key if k not in common_keys) or "(all)"
        groups.append(Group(key, members, finished, config, label, setting))
    return groups, common


def _metric_names(groups: list[Group]) -> list[str]:
    names = {k for g in groups for j in g.finished for k in j.metrics}
    return sorted(names, key=lambda k: (k not in MAIN_METRICS,
                                        MAIN_METRICS.index(k) if k in MAIN_METRICS else 0, k))


def _distinguish(items: list[tuple[Any, dict[str, str]]],
                 configs: dict[Any, dict] | None = None) -> dict[Any, list[tuple[str, str]]]:
    """For items with the same label: the overrides (key, value) whose values differ among them.
    An item without the override shows the value its run's config (``configs[item]``) has there
    (e.g. ``attack.stages=[coarse,fine]`` beside ``attack.stages=[coarse]``), else ``default``."""
    if len(items) < 2:
        return {i: [] for i, _ in items}
    keys = sorted({k for _, d in items for k in d})
    varying = [k for k in keys if len({d.get(k) for _, d in items}) > 1]

    def value(i: Any, d: dict[str, str], k: str) -> str:
        if k in d:
            return d[k]
        found = lookup((configs or {}).get(i), k)  # keys come without +/~ (find_jobs)
        return "default" if found is None else _show(found)

    return {i: [(k, value(i, d, k)) for k in varying] for i, d in items}


def _label(label: str, extra: list[tuple[str, str]], rename: dict[str, str] | None = None) -> str:
    rename = rename or {}
    text = ", ".join(f"{rename.get(k, k)}={v}" for k, v in extra)
    return f"{label} ({text})" if text else label


def build_report(root: Path, options: Options | None = None) -> Report:
    """Read the jobs below ``root`` and build every table, series and answer (nothing written)."""
    options = (options or Options()).check()
    root = Path(root)
    jobs = find_jobs(root)
    groups, common = _groups(jobs, options)
    metrics = _metric_names(groups)
    for g in groups:
        runs = len(g.finished)
        g.stats = {m: summarise([j.metrics[m] for j in g.finished if m in j.metrics], runs, options.digits)
                   for m in metrics}
    done = [g for g in groups if g.finished]
    layout = next((lay for lay in (Layout.of(g.config) for g in done) if lay is not None), None)
    report = Report(root, options, jobs, groups, common, metrics, layout)
    if layout is None or not done:
        return report
    for g in done:
        x = lookup(g.config, layout.sweep_key) if layout.sweep_key else None
        g.x = float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
    paper = load_paper(options.paper if options.paper is not None else layout.paper)
    report.margin = (options.margin if options.margin is not None
                     else float(layout.threshold["margin"]) if layout.threshold else None)
    by_table: dict[tuple, list[Group]] = {}
    for g in done:
        by_table.setdefault(tuple(_show(lookup(g.config, k)) for k in layout.tables_by), []).append(g)
    for value, members in by_table.items():
        report.tables.append(_table(layout, value, members, paper))
    _series(report)
    _answers(report)
    return report


def _table(layout: Layout, value: tuple, members: list[Group], paper: dict | None) -> Table:
    title = ", ".join(f"{k}={v}" for k, v in zip(layout.tables_by, value) if v != "null")
    block_of = {id(g): ", ".join(_show(lookup(g.config, k)) for k in layout.blocks_by) for g in members}
    blocks = list(dict.fromkeys(block_of[id(g)] for g in members))
    cols = [c for c, _ in layout.columns]
    label_order = list(dict.fromkeys(g.label for g in members))

    def has(g: Group, prefix: str) -> bool:
        return any(f"{prefix}/{c}" in g.stats for c in cols)

    def cells(g: Group, prefix: str) -> dict[str, Stat]:
        return {c: g.stats.get(f"{prefix}/{c}", EMPTY) for c in cols}

    # the attack's rows: the label, and what tells same-label groups of a block apart
    attack_rows: dict[str, Row] = {}
    order: dict[str, tuple] = {}
    row_label: dict[int, str] = {}
    for block in blocks:
        in_block = [g for g in members if block_of[id(g)] == block]
        for label in label_order:
            same = [g for g in in_block if g.label == label]
            extra = _distinguish([(id(g), g.keyed) for g in same], {id(g): g.config for g in same})
            for g in same:
                row_label[id(g)] = _label(label, extra[id(g)])
                if not has(g, layout.attack_row):
                    continue
                row = attack_rows.setdefault(row_label[id(g)], Row(row_label[id(g)], "attack", prefix=layout.attack_row))
                row.cells[block], row.groups[block] = cells(g, layout.attack_row), g
                order.setdefault(row.label, (label_order.index(label), g.x is None, g.x or 0.0, row.label))
    rows = sorted(attack_rows.values(), key=lambda r: order[r.label])
    # the controls: once when the same in every group (and not per attack), else per group
    control_rows: list[Row] = []
    for spec in layout.controls:
        made: dict[str, Row] = {}
        for block in blocks:
            present = [g for g in members if block_of[id(g)] == block and has(g, spec["row"])]
            if not present:
                continue
            texts = {tuple(s.text for s in cells(g, spec["row"]).values()) for g in present}
            if not spec["per_attack"] and len(texts) == 1:
                chosen = [(spec["label"], present[0])]
            else:
                extra = _distinguish([(id(g), g.keyed) for g in present], {id(g): g.config for g in present})
                chosen = []
                for g in present:  # per attack: its row's label; else what tells the groups apart
                    text = ", ".join(f"{k}={v}" for k, v in extra[id(g)])
                    text = row_label[id(g)] if spec["per_attack"] or not text else text
                    chosen.append((f"{spec['label']} ({text})", g))
            for label, g in chosen:
                row = made.setdefault(label, Row(label, "control", prefix=spec["row"]))
                row.cells[block], row.groups[block] = cells(g, spec["row"]), g
        control_rows += list(made.values())
    note = ""
    if paper is not None:
        rows, n1 = _with_paper(rows, paper, cols)
        control_rows, n2 = _with_paper(control_rows, paper, cols)
        if n1 + n2:
            note = (f"† {paper['source']}: the paper's published numbers for the setting of the row "
                    f"above them (matched on the run's config; {Path(paper['file']).name}), not ours.")
    # a column no row of any block has (ours or the paper's: e.g. fid_cfgan without
    # metrics=cfgan_paper) is left out; a metric reported missing is a value and stays
    every = rows + control_rows
    kept = [(c, d) for c, d in layout.columns
            if any(_reported(r.cells.get(b, {}).get(c, EMPTY)) for r in every for b in blocks)]
    unreported = [c for c, _ in layout.columns if all(c != k for k, _ in kept)]
    return Table(title, value, blocks, kept, every, members, note, unreported)


def _reported(s: Stat) -> bool:
    return s.mean is not None or bool(s.text)


def _with_paper(rows: list[Row], paper: dict, cols: list[str]) -> tuple[list[Row], int]:
    """``rows`` with, after each, the paper's numbers for its setting (identical tables merged)."""
    out, added = [], 0
    for row in rows:
        out.append(row)
        per_table: dict[str, dict[str, dict[str, Stat]]] = {}
        for block, g in row.groups.items():
            for e in paper["entries"]:
                if e["row"] == row.prefix and matches(g.config, e["match"]):
                    per_table.setdefault(e["table"], {}).setdefault(
                        block, {c: paper_stat(e["values"][c]) if c in e["values"] else EMPTY for c in cols})
        merged: dict[str, list[str]] = {}
        for name, blocks in per_table.items():
            sig = json.dumps({b: {c: s.text for c, s in v.items()} for b, v in blocks.items()}, sort_keys=True)
            merged.setdefault(sig, []).append(name)
        for names in merged.values():
            label = f"{PAPER}: {', '.join(names)}"
            out.append(Row(label, "paper", cells=per_table[names[0]], prefix=row.prefix, of=row.label,
                           source=f"paper: {paper['source']}, {', '.join(names)}"))
            added += 1
    return out, added


def _sweep_series(table: Table, sweep_key: str) -> dict[tuple, tuple[list[Group], list[tuple[str, str]]]]:
    """The attack settings of ``table`` over the swept value: ``{(label, other overrides):
    (its groups, the overrides that tell it apart from same-label settings)}``."""
    by_series: dict[tuple, list[Group]] = {}
    for g in table.groups:
        if g.x is not None:
            by_series.setdefault((g.label, tuple((k, v) for k, v in g.key if k != sweep_key)), []).append(g)
    configs = {k: m[0].config for k, m in by_series.items()}
    extra: dict[tuple, list[tuple[str, str]]] = {}
    for label in dict.fromkeys(k[0] for k in by_series):
        extra.update(_distinguish([(k, dict(k[1])) for k in by_series if k[0] == label], configs))
    return {k: (m, extra[k]) for k, m in by_series.items()}


def _series(report: Report) -> None:
    """Per layout column, one line per table and attack setting over the swept value, the
    controls dashed (needs a sweep with two or more values)."""
    layout = report.layout
    if layout.sweep_key is None:
        return
    if len({g.x for t in report.tables for g in t.groups if g.x is not None}) < 2:
        return
    several = len(report.tables) > 1
    per_table = []  # (table, where, its attack series with their line names)
    for table in report.tables:
        where = ", ".join(v for v in table.value if v != "null") if several else ""
        named = []
        for skey, (members, extra) in _sweep_series(table, layout.sweep_key).items():
            parts = [where] * bool(where) + [f"{k}={v}" for k, v in extra]
            named.append((f"{skey[0]} ({', '.join(parts)})" if parts else skey[0], members))
        per_table.append((table, where, named))
    for col, _ in layout.columns:
        lines: list[Series] = []
        for table, where, named in per_table:
            for name, members in named:
                _add_line(lines, name, members, f"{layout.attack_row}/{col}", True)
            for spec in layout.controls:
                firsts: dict[float, Group] = {}
                for g in table.groups:
                    if g.x is not None and f"{spec['row']}/{col}" in g.stats:
                        firsts.setdefault(g.x, g)
                name = f"{spec['label']} ({where})" if where else spec["label"]
                _add_line(lines, name, list(firsts.values()), f"{spec['row']}/{col}", False)
        if any(s.attack for s in lines):
            report.series[f"{layout.attack_row}/{col}"] = lines


def _add_line(lines: list[Series], label: str, groups: list[Group], metric: str, attack: bool) -> None:
    points = sorted((g.x, s.mean, s.std, s.n) for g in groups
                    if (s := g.stats.get(metric)) is not None and s.mean is not None)
    if points:
        lines.append(Series(label, points, attack))


def _answers(report: Report) -> None:
    """The threshold question per table and attack setting (see the module docstring)."""
    layout = report.layout
    th = layout.threshold
    if th is None:
        return
    base_row = next(c["row"] for c in layout.controls if c["name"] == th["baseline"])
    ours, theirs = f"{layout.attack_row}/{th['metric']}", f"{base_row}/{th['metric']}"
    count = th.get("count")
    for table in report.tables:
        for skey, (members, extra) in _sweep_series(table, layout.sweep_key).items():
            points = []
            for g in sorted(members, key=lambda g: g.x):
                diffs = [j.metrics[ours] - j.metrics[theirs] for j in g.finished
                         if all(isinstance(j.metrics.get(m), (int, float)) for m in (ours, theirs))]
                if diffs:
                    points.append((g.x, summarise(diffs, len(g.finished), report.options.digits), g))
            if not points:
                continue
            hit = next((i for i, (_, s, _) in enumerate(points) if s.mean > report.margin), None)

            def count_at(g: Group) -> Stat | None:
                return g.stats.get(count) if count else None

            value = points[hit][0] if hit is not None else None
            below = (points[hit - 1][0], count_at(points[hit - 1][2])) if hit else None
            report.answers.append(Answer(table.title, skey[0], _label(skey[0], extra), value,
                                         count_at(points[hit][2]) if hit is not None else None,
                                         [(x, s) for x, s, _ in points], below))


# ------------------------------------------------------------------------------ writing


def write_reports(root: Path, options: Options | None = None) -> list[Path]:
    """Build the report of ``root`` and write its files into ``root`` (see the module
    docstring); returns the paths written."""
    report = build_report(root, options)
    root = report.root
    written = _write_csv(report)
    plots = _plots(report)
    grids = _grids(report)
    written.append(atomic_write_text(root / "report.tex", _tex(report)))
    md = _markdown(report, plots, grids)
    written.insert(0, atomic_write_text(root / "report.md", md))
    if report.options.wandb:  # the jobs' logger was W&B: the tables there too
        from reconattack.tracking import log_report_tables

        log_report_tables(root, report.jobs, [p for p in written if p.suffix == ".csv"])
    return written + plots + [f for p, _ in grids for f in (p, _figure_path(p))]


def _md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def _markdown(report: Report, plots: list[Path], grids: list[tuple[Path, list[str]]]) -> str:
    jobs = report.jobs
    counts = defaultdict(int)
    for j in jobs:
        counts[j.status] += 1
    summary = ", ".join(f"{counts[s]} {s}" for s in ("finished", "failed", "unfinished") if counts[s])
    ignore = ", ".join(report.options.ignore)
    md = [f"# Report: {report.root}", "",
          f"{len(jobs)} job(s): {summary}. A setting is the jobs' overrides without {ignore}; its "
          f"numbers are mean ± std over its finished runs (sample std, ddof=1; one run: its value), "
          f"`runs` says how many, `(n=k)` marks a metric fewer runs reported.", ""]
    md.append("Overrides common to all jobs: " + (" ".join(f"`{o}`" for o in report.common) or "none") + ".")
    reasons: dict[str, None] = {}

    def cell(s: Stat) -> str:
        if s.text.startswith(MISSING):
            reasons.setdefault(s.text[len(MISSING):], None)
        return s.md()

    md += ["", "## All metrics", ""]
    md += _md_table(["setting", "runs", "no result"] + report.metrics,
                    [[g.setting, str(len(g.finished)), str(len(g.jobs) - len(g.finished))]
                     + [cell(g.stats.get(m, EMPTY)) for m in report.metrics] for g in report.groups])
    if report.tables:
        md += ["", "## Paper layout"]
    for table in report.tables:
        heading = report.layout.title + (f": {table.title}" if table.title else "")
        several = len(table.blocks) > 1
        head = ["row"] + [f"{b + ': ' if several else ''}{c} {ARROWS[d]}" for b in table.blocks for c, d in table.columns]
        lines = [[r.label] + [cell(r.cells.get(b, {}).get(c, EMPTY)) for b in table.blocks for c, _ in table.columns]
                 for r in table.rows]
        md += ["", f"### {heading}", ""] + _md_table(head, lines)
        if table.paper_note:
            md += ["", table.paper_note]
        if table.unreported:
            md += ["", "Left out, no run of this table reported them: "
                   + ", ".join(f"`{c}`" for c in table.unreported) + "."]
    if report.layout is not None and report.layout.threshold is not None and report.tables:
        md += _md_answers(report)
    if plots:
        md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    if grids or report.notes:
        md += ["", "## Sample images", ""]
        for path, titles in grids:
            figure = _figure_path(path)
            md += [f"![{figure.stem}]({figure.name})", "", "Columns: "
                   + ", ".join(f"`{t}`" for t in titles) + f" (the first {report.options.grid_rows} held-out images at most, from the first "
                   f"finished run of each setting). The tiles at their own pixels, untitled: `{path.name}`.", ""]
        md += [f"- {n}" for n in report.notes]
    bad = [j for j in jobs if j.status != "finished"]
    if bad:
        common = set(report.common)
        md += ["", "## Jobs without results", ""]
        md += _md_table(["job", "status", "overrides", "error"],
                        [[j.name, j.status, " ".join(o for o in j.overrides if o not in common).replace("|", "\\|"),
                          (j.error or "").replace("|", "\\|")] for j in bad])
    if reasons:
        md += ["", "Metrics the runs reported as missing (no pretrained weights):", ""] + [f"- {r}" for r in reasons]
    return "\n".join(md) + "\n"


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _md_answers(report: Report) -> list[str]:
    layout, th = report.layout, report.layout.threshold
    base = next(c for c in layout.controls if c["name"] == th["baseline"])
    attack = ", ".join(dict.fromkeys(a.attack for a in report.answers)) or "the attack"
    count_label = th.get("count_label") or th.get("count") or "count"
    src = "--margin" if report.options.margin is not None else "threat.report.threshold.margin"
    md = ["", f"## {th.get('title') or 'Threshold'}", "",
          f"The smallest {layout.sweep_key} ({layout.sweep_label}) at which {_possessive(attack)} {th['metric']} "
          f"exceeds {_possessive(base['label'])} by more than {report.margin:g} ({src}), the mean over seeds of "
          f"the per-run difference; below it, {attack} did not beat {base['label']} by that margin "
          f"at any tested value.", ""]
    def count(stat: Stat | None) -> str:  # a count is the same for every seed: as a number
        if stat is None:
            return ""
        return f"{stat.mean:g}" if stat.mean is not None and not stat.std else stat.text

    lines = []
    for a in report.answers:
        value = str(a.value) if a.value is not None else f"none up to {str(a.points[-1][0])}"
        cnt = count(a.count)
        below = (f"{a.below[0]}" + (f" ({count(a.below[1])})" if a.below[1] is not None else "") if a.below
                 else "none tested" if a.value is not None else "")
        diffs = "; ".join(f"{str(x)}: {s.text}" for x, s in a.points)
        lines.append([a.table or "(all)", a.series, value, cnt, below, diffs])
    md += _md_table(["table", "setting", layout.sweep_label, count_label,
                     f"largest tested {layout.sweep_label} below it ({count_label})",
                     f"difference at each {layout.sweep_label}"], lines)
    return md


def _write_csv(report: Report) -> list[Path]:
    root = report.root
    with io.StringIO(newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "runs", "no result"] + [c for m in report.metrics for c in (f"{m} mean", f"{m} std", f"{m} n")])
        for g in report.groups:
            row = [g.setting, len(g.finished), len(g.jobs) - len(g.finished)]
            for m in report.metrics:
                s = g.stats.get(m, EMPTY)
                row += [s.mean, "" if s.std is None else s.std, s.n] if s.mean is not None else [s.text, "", s.n]
            w.writerow(row)
        out = [atomic_write_text(root / "report.csv", f.getvalue())]
    if report.tables:
        with io.StringIO(newline="") as f:
            w = csv.writer(f)
            w.writerow(["table", "block", "row", "source", "column", "mean", "std", "n", "text"])
            for t in report.tables:
                for r in t.rows:
                    for b in t.blocks:
                        for c, _ in t.columns:
                            s = r.cells.get(b, {}).get(c)
                            if s is None or not _reported(s):
                                continue
                            w.writerow([t.title, b, r.of or r.label, r.source or "ours", c,
                                        "" if s.mean is None else s.mean, "" if s.std is None else s.std,
                                        "" if r.kind == "paper" else s.n, s.text])
            out.append(atomic_write_text(root / "report_layout.csv", f.getvalue()))
    return out


# ------------------------------------------------------------------------------ LaTeX

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "†": r"$^\dagger$", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}


def tex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX tabular (special characters escaped, ± † ↑ ↓ as math)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex(report: Report) -> str:
    d = report.options.digits
    out = ["% python -m reconattack.report: booktabs tables; in the preamble:",
           "% \\usepackage{booktabs}", ""]
    if not report.tables:  # no layout in the runs' configs: every metric per setting
        cols = report.metrics
        out += [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "c" * (len(cols) + 1) + "}", r"\toprule",
                " & ".join(["setting", "runs"] + [tex_escape(c) for c in cols]) + r" \\", r"\midrule"]
        for g in report.groups:
            out.append(" & ".join([tex_escape(g.setting), str(len(g.finished))]
                                  + [g.stats.get(m, EMPTY).tex(d) for m in cols]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        return "\n".join(out)
    for i, t in enumerate(report.tables):
        ncol = len(t.columns)
        caption = report.layout.title + (f": {t.title}" if t.title else "")
        out += [r"\begin{table}[t]", r"\centering", f"\\caption{{{tex_escape(caption)}}}",
                f"\\label{{tab:report-{i + 1}}}", r"\begin{tabular}{l" + ("c" * ncol) * len(t.blocks) + "}",
                r"\toprule"]
        if len(t.blocks) > 1:
            out.append(" & " + " & ".join(f"\\multicolumn{{{ncol}}}{{c}}{{{tex_escape(b)}}}" for b in t.blocks) + r" \\")
            out.append("".join(f"\\cmidrule(lr){{{2 + k * ncol}-{1 + (k + 1) * ncol}}}" for k in range(len(t.blocks))))
        out.append(" & " + " & ".join(f"{tex_escape(c)} {TEX_ARROWS[dr]}" for _ in t.blocks for c, dr in t.columns) + r" \\")
        out.append(r"\midrule")
        previous = None
        for r in t.rows:
            kind = "control" if r.kind == "control" or (r.kind == "paper" and previous == "control") else "attack"
            if previous == "attack" and kind == "control":
                out.append(r"\midrule")
            previous = kind
            if r.kind == "paper":
                label = r"\textit{$^\dagger$ " + tex_escape(r.label.removeprefix("† ")) + "}"
            else:
                label = tex_escape(r.label)
            cells = [r.cells.get(b, {}).get(c, EMPTY).tex(d) for b in t.blocks for c, _ in t.columns]
            out.append(" & ".join([label] + cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if t.paper_note:
            out += [r"\par\smallskip\footnotesize " + tex_escape(t.paper_note)]
        out += [r"\end{table}", ""]
    return "\n".join(out)


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


def _plots(report: Report) -> list[Path]:
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
        if ticks[0] > 0 and ticks[-1] / ticks[0] >= 10:
            ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
        col = metric.split("/")[-1]
        arrow = ARROWS.get(directions.get(col, ""), "")
        ax.set_xlabel(layout.sweep_label if report.series else lines[0].label)
        ax.set_ylabel(f"{metric} {arrow}".strip())
        if report.series:
            ax.set_title(f"{layout.title}: {col} against {layout.sweep_label}", fontsize=9)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
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


# ------------------------------------------------------------------------------ sample grids


def read_grid(run_dir: Path) -> tuple[dict[str, np.ndarray], int] | None:
    """The tiles of a run's ``samples/test_grid.png`` (names from ``test_grid.txt``):
    ``({column: (rows, S, S, 3) uint8}, S)``, or None when absent or not a grid of square tiles."""
    from PIL import Image

    png, txt = run_dir / "samples" / "test_grid.png", run_dir / "samples" / "test_grid.txt"
    if not (png.is_file() and txt.is_file()):
        return None
    names = [n.strip() for n in txt.read_text().strip().split("|")]
    with Image.open(png) as im:
        img = np.asarray(im.convert("RGB"))
    h, w = img.shape[:2]
    size = (w - GRID_PAD) / len(names) - GRID_PAD
    rows = (h - GRID_PAD) / (size + GRID_PAD) if size > 0 else 0
    if size != int(size) or size <= 0 or rows != int(rows) or rows < 1:
        return None
    size, rows = int(size), int(rows)
    step = size + GRID_PAD
    cols = {}
    for j, name in enumerate(names):
        cols[name] = np.stack([img[GRID_PAD + i * step:GRID_PAD + i * step + size,
                                   GRID_PAD + j * step:GRID_PAD + j * step + size] for i in range(rows)])
    return cols, size


def _grids(report: Report) -> list[tuple[Path, list[str]]]:
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
                extra.update(_distinguish([(id(g), g.keyed) for g in members], {id(g): g.config for g in members}))
            for r, (tiles, _) in read:
                g = r.groups[block]
                columns.append(tiles[layout.attack_row][:n])
                titles.append(_label(g.label, extra[id(g)], rename))
            step = size + GRID_PAD
            canvas = np.full((GRID_PAD + n * step, GRID_PAD + len(columns) * step, 3), 255, np.uint8)
            for j, col in enumerate(columns):
                for i in range(n):
                    canvas[GRID_PAD + i * step:GRID_PAD + i * step + size,
                           GRID_PAD + j * step:GRID_PAD + j * step + size] = col[i]
            suffix = "".join("_" + re.sub(r"[^A-Za-z0-9.-]+", "_", v) for v in (*table.value, block) if v and v != "null")
            path = report.root / f"report_grid{suffix}.png"
            buf = io.BytesIO()
            Image.fromarray(canvas).save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
            atomic_write_text(path.with_suffix(".txt"), " | ".join(titles) + "\n")
            atomic_write_bytes(_figure_path(path), _grid_figure(columns, titles, n))
            out.append((path, titles))
    return out


def _figure_path(grid: Path) -> Path:
    return grid.with_name(f"{grid.stem}_figure.png")


def _grid_figure(columns: list[np.ndarray], titles: list[str], n: int) -> bytes:
    """The sample grid as a figure: a column per title (titled), ``n`` rows, tiles of any size
    drawn at about an inch each without smoothing. ``columns``: ``(>= n, S, S, 3)`` uint8."""
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


# ------------------------------------------------------------------------------ entry points


class ReportCallback(Callback):
    """Hydra callback (``hydra.callbacks``) that writes the report of a multirun when it ends, so
    an experiment that sweeps (e.g. ``demo_sift_baselines``) prints one table."""

    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(str(config.hydra.sweep.dir))
        try:
            write_reports(root)
        except UserError as exc:
            print(f"report: {type(exc).__name__}: {exc}")
            return
        print((root / "report.md").read_text())
        print(f"report written to {root / 'report.md'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m reconattack.report",
        description="Paper-style tables (markdown, CSV, LaTeX), plots and sample grids from a run or "
                    "multirun directory; written into it.")
    ap.add_argument("dir", type=Path, help="a run or multirun directory")
    ap.add_argument("--margin", type=float, default=None,
                    help="the key-share question's margin: the smallest swept value at which the attack's "
                         "metric exceeds the baseline control's by more than this (default: the threat's "
                         "report.threshold.margin)")
    ap.add_argument("--ignore", action="append", default=[], metavar="KEY",
                    help=f"also average over this override key (repeatable; always: {', '.join(DEFAULT_IGNORE)})")
    ap.add_argument("--digits", type=int, default=4, help="decimals of our numbers (default 4)")
    ap.add_argument("--grid-rows", type=int, default=4, help="images per sample grid (default 4)")
    ap.add_argument("--paper", default=None,
                    help="YAML of the paper's numbers (relative: under conf/; default: the threat's "
                         "report.paper; 'none': leave them out)")
    ap.add_argument("--no-wandb", action="store_true",
                    help="do not log the tables to W&B (by default they are, when the jobs logged there)")
    args = ap.parse_args(argv)
    options = Options(margin=args.margin, ignore=DEFAULT_IGNORE + tuple(args.ignore), digits=args.digits,
                      grid_rows=args.grid_rows, paper=args.paper, wandb=not args.no_wandb)
    try:
        written = write_reports(args.dir, options)
    except UserError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print((args.dir / "report.md").read_text())
    print("written: " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
