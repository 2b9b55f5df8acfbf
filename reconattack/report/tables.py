"""The paper layout and its tables: rows of the attack and the controls, the paper's numbers beside
ours, the series over the swept threat parameter, the key-share answer, and a defence sweep's
privacy-utility lines (:func:`privacy_utility`) (:class:`Report`).

A layout column is a metric of each row (``psnr``: ``<row>/psnr``), or a metric of the run itself
that no row has (``utility/h_acc@3``), shown on the attack's rows (:func:`column_stat`).

The layout comes from the runs' own configs (the threat's ``report`` section, :class:`Layout`),
never from code that names an attack or a threat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from reconattack.defences.base import META_KEYS
from reconattack.errors import ConfigError, InputNotFoundError
from reconattack.metrics.diagnostics import warnings_of
from reconattack.report.runs import (
    EMPTY,
    Group,
    Job,
    Options,
    Stat,
    as_override,
    distinguish,
    find_jobs,
    group_jobs,
    lookup,
    matches,
    metric_names,
    summarise,
    with_overrides,
)
from reconattack.utils.config import CONF_DIR

ARROWS = {"higher": "↑", "lower": "↓"}


PAPER = "† paper"


# ------------------------------------------------------------------------------ layout

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
    settings: list[tuple[str, str]] = field(default_factory=list)  # (config key, label)
    #: a defence sweep's privacy-utility figure: ``{"x": a run metric (utility), "y": [the attack
    #: row's metrics (leakage)]}``, or None (:func:`privacy_utility`)
    privacy_utility: dict | None = None

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
        # the controls, then the checks: rows the threat's evaluation reports beside them without
        # images of their own (the AVIH service model's verification rows)
        rows = {**(spec.get("controls") or {}), **(spec.get("checks") or {})}
        checks = set(spec.get("checks") or {}) - set(spec.get("controls") or {})
        controls = [{"name": str(name), "row": str(c["row"]), "label": str(c.get("label", c["row"])),
                     "per_attack": bool(c.get("per_attack")), "check": name in checks} for name, c in rows.items()]
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
        trade = spec.get("privacy_utility") or None
        if trade is not None:
            if not (isinstance(trade, dict) and isinstance(trade.get("x"), str) and trade.get("y")):
                raise ConfigError(f"threat.report.privacy_utility must be null or {{x: metric, y: [metrics]}}, "
                                  f"got {trade!r}")
            ys = trade["y"] if isinstance(trade["y"], list) else [trade["y"]]
            trade = {"x": trade["x"], "y": [str(y) for y in ys]}
        return cls(title=str(threat.get("label") or threat.get("name") or "Results"),
                   attack_row=str(spec.get("attack_row", "test")), controls=controls, columns=columns,
                   tables_by=as_list(spec.get("tables_by")), blocks_by=as_list(spec.get("blocks_by")),
                   sweep=dict(sweep) if sweep else None, threshold=dict(threshold) if threshold else None,
                   paper=spec.get("paper"),
                   settings=[(str(k), str(v)) for k, v in (spec.get("settings") or {}).items()],
                   privacy_utility=trade)

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
    notes = data.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ConfigError(f"paper numbers file {path}: notes must be a list of sentences")
    return {"source": str(data.get("source") or path.stem), "file": str(path), "notes": notes,
            "entries": [{**e, "table": str(e["table"]), "row": str(e["row"]),
                         "values": {str(k): str(v) for k, v in e["values"].items()}} for e in entries]}


def paper_stat(text: str) -> Stat:
    """A paper cell from its printed text, ``"0.612 ± 0.136"`` or ``"20.91"``."""
    parts = [p.strip() for p in str(text).split("±")]
    try:
        mean = float(parts[0])
        std = float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        mean = std = None
    return Stat(mean, std, 0, str(text), 0, paper=True)


# ------------------------------------------------------------------------------ the report

@dataclass
class Row:
    label: str
    kind: str  # attack | control | paper
    cells: dict[str, dict[str, Stat]] = field(default_factory=dict)  # block -> column -> cell
    groups: dict[str, Group] = field(default_factory=dict)  # block -> its group
    prefix: str = ""  # metrics prefix (attack_row or a control's row)
    of: str = ""  # paper rows: the label of the row they sit beside
    source: str = ""  # paper rows: "paper: <source>, <tables>"

    def flags(self) -> list[Flag]:
        """The collapse checks' warnings of this row in its runs (``metrics.json``'s ``warnings``
        naming the row's metrics prefix), per block (:func:`row_flags`)."""
        return row_flags(self) if self.kind != "paper" else []

    @property
    def flagged(self) -> bool:
        return bool(self.flags())


@dataclass
class Flag:
    """A collapse warning of a row: the runs of its block's setting that have it (their job
    names), of how many finished runs, and the message (:mod:`reconattack.metrics.diagnostics`)."""

    block: str
    check: str
    message: str
    jobs: list[str]
    runs: int


def row_flags(row: Row) -> list[Flag]:
    """The warnings of ``row`` in the finished runs of each block's setting, one :class:`Flag` per
    block, check and message."""
    out: dict[tuple, Flag] = {}
    for block, g in row.groups.items():
        for job in g.finished:
            for w in warnings_of(job.metrics, row.prefix):
                key = (block, str(w.get("check")), str(w.get("message")))
                flag = out.setdefault(key, Flag(block, key[1], key[2], [], len(g.finished)))
                flag.jobs.append(job.name)
    return list(out.values())


def group_flagged(g: Group) -> int:
    """How many finished runs of a setting the collapse checks flagged (any row)."""
    return sum(bool(warnings_of(j.metrics)) for j in g.finished)


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
    settings: str = ""  # what its numbers depend on (layout settings): "label: value; ..."


@dataclass
class Series:
    label: str
    points: list[tuple[float, float, float | None, int]]  # (x, mean, std, n)
    attack: bool


@dataclass
class Answer:
    table: str
    settings: str
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
    x_labels: dict[float, str] = field(default_factory=dict)  # tick labels of a categorical sweep
    defence: str | None = None  # the defence setting the runs vary (``defence.keep``): a defence sweep


def defence_sweep(layout: Layout, groups: list[Group]) -> tuple[Layout, dict | None]:
    """When the runs differ in exactly one ``defence.*`` setting (a multirun over a defence's
    strength, ``conf/defence/``), that setting is the report's sweep — the table's row per strength
    and the plots of every metric against it — in place of the threat's own (and its threshold
    question, which is about the threat's sweep). Returns the layout and, for a setting whose
    values are not numbers, ``{value: position}`` from the defence's ``order`` (else first seen)."""
    configs = [g.config for g in groups]
    keys = set().union(*(set(c.get("defence") or {}) for c in configs)) - META_KEYS
    varied = [k for k in sorted(keys)
              if len({json.dumps(lookup(c, f"defence.{k}"), sort_keys=True, default=str) for c in configs}) > 1]
    if len(varied) != 1:
        return layout, None
    key = varied[0]
    defence = configs[0].get("defence") or {}
    label = str((defence.get("labels") or {}).get(key) or key)
    layout = replace(layout, sweep={"key": f"defence.{key}", "label": f"{label} (defence.{key})"}, threshold=None)
    values = [lookup(c, f"defence.{key}") for c in configs]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return layout, None
    order = [as_override(v) for v in (defence.get("order") or {}).get(key) or []]
    for v in values:
        if as_override(v) not in order:
            order.append(as_override(v))
    return layout, {v: float(i) for i, v in enumerate(order)}


def build_report(root: Path, options: Options | None = None) -> Report:
    """Read the jobs below ``root`` and build every table, series and answer (nothing written)."""
    options = (options or Options()).check()
    root = Path(root)
    jobs = find_jobs(root)
    groups, common = group_jobs(jobs, options)
    metrics = metric_names(groups)
    for g in groups:
        runs = len(g.finished)
        g.stats = {m: summarise([j.metrics[m] for j in g.finished if m in j.metrics], runs, options.digits)
                   for m in metrics}
    done = [g for g in groups if g.finished]
    layout = next((lay for lay in (Layout.of(g.config) for g in done) if lay is not None), None)
    categories = None
    swept = None
    if layout is not None and done:
        defended, categories = defence_sweep(layout, done)
        swept = defended.sweep_key if defended is not layout else None  # a defence setting is the sweep
        layout = defended
    report = Report(root, options, jobs, groups, common, metrics, layout, defence=swept)
    if layout is None or not done:
        return report
    for g in done:
        x = lookup(g.config, layout.sweep_key) if layout.sweep_key else None
        if categories is not None:
            g.x = categories.get(as_override(x))
        else:
            g.x = float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
    if categories is not None:
        report.x_labels = {x: v for v, x in categories.items()}
    paper = load_paper(options.paper if options.paper is not None else layout.paper)
    report.margin = (options.margin if options.margin is not None
                     else float(layout.threshold["margin"]) if layout.threshold else None)
    by_table: dict[tuple, list[Group]] = {}
    for g in done:
        by_table.setdefault(tuple(as_override(lookup(g.config, k)) for k in layout.tables_by), []).append(g)
    for value, members in by_table.items():
        report.tables.append(_table(layout, value, members, paper))
    _series(report)
    _answers(report)
    return report


def _table(layout: Layout, value: tuple, members: list[Group], paper: dict | None) -> Table:
    title = ", ".join(f"{k}={v}" for k, v in zip(layout.tables_by, value) if v != "null")
    block_of = {id(g): ", ".join(as_override(lookup(g.config, k)) for k in layout.blocks_by) for g in members}
    blocks = list(dict.fromkeys(block_of[id(g)] for g in members))
    cols = [c for c, _ in layout.columns]
    label_order = list(dict.fromkeys(g.label for g in members))

    def has(g: Group, prefix: str) -> bool:  # a row another group's runs have is no row of this one
        return any(reported(column_stat(g, prefix, c, prefix == layout.attack_row)) for c in cols)

    def cells(g: Group, prefix: str) -> dict[str, Stat]:
        return {c: column_stat(g, prefix, c, prefix == layout.attack_row) for c in cols}

    # the attack's rows: the label, and what tells same-label groups of a block apart
    attack_rows: dict[str, Row] = {}
    order: dict[str, tuple] = {}
    row_label: dict[int, str] = {}
    for block in blocks:
        in_block = [g for g in members if block_of[id(g)] == block]
        for label in label_order:
            same = [g for g in in_block if g.label == label]
            extra = distinguish([(id(g), g.keyed) for g in same], {id(g): g.config for g in same})
            for g in same:
                row_label[id(g)] = with_overrides(label, extra[id(g)])
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
                extra = distinguish([(id(g), g.keyed) for g in present], {id(g): g.config for g in present})
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
            note = " ".join([note, *paper["notes"]])
    # a column no row of any block has (ours or the paper's: e.g. fid_cfgan without
    # metrics=cfgan_paper) is left out; a metric reported missing is a value and stays
    every = rows + control_rows
    kept = [(c, d) for c, d in layout.columns
            if any(reported(r.cells.get(b, {}).get(c, EMPTY)) for r in every for b in blocks)]
    unreported = [c for c, _ in layout.columns if all(c != k for k, _ in kept)]
    settings = "; ".join(f"{label}: " + ", ".join(dict.fromkeys(as_override(lookup(g.config, key)) for g in members))
                         for key, label in layout.settings)
    return Table(title, value, blocks, kept, every, members, note, unreported, settings)


def reported(s: Stat) -> bool:
    return s.mean is not None or bool(s.text)


def column_stat(g: Group, prefix: str, col: str, attack: bool) -> Stat:
    """The cell of layout column ``col`` on metrics row ``prefix`` of setting ``g``: its
    ``<prefix>/<col>``; on the attack's rows, a column that no row has but the run itself
    (``utility/h_acc@3``: what the run's defence leaves of the features' use, one number per run)
    is that run metric. The controls' rows never show a run metric: it is not theirs."""
    s = g.stats.get(f"{prefix}/{col}")
    if s is None and attack:
        s = g.stats.get(col)
    return EMPTY if s is None else s


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
        extra.update(distinguish([(k, dict(k[1])) for k in by_series if k[0] == label], configs))
    return {k: (m, extra[k]) for k, m in by_series.items()}


def _named_series(report: Report) -> list[tuple[Table, str, list[tuple[str, list[Group]]]]]:
    """Per table: the table, what names it among several (else ""), and its attack settings over
    the swept value as ``(line name, their groups in the runs' order)``."""
    layout = report.layout
    several = len(report.tables) > 1
    out = []
    for table in report.tables:
        where = ", ".join(v for v in table.value if v != "null") if several else ""
        named = []
        for skey, (members, extra) in _sweep_series(table, layout.sweep_key).items():
            parts = [where] * bool(where) + [f"{k}={v}" for k, v in extra]
            named.append((f"{skey[0]} ({', '.join(parts)})" if parts else skey[0], members))
        out.append((table, where, named))
    return out


def _series(report: Report) -> None:
    """Per layout column, one line per table and attack setting over the swept value, the
    controls dashed (needs a sweep with two or more values). A column that is a run metric
    (:func:`column_stat`, ``utility/...``) is plotted under its own name, without controls."""
    layout = report.layout
    if layout.sweep_key is None:
        return
    if len({g.x for t in report.tables for g in t.groups if g.x is not None}) < 2:
        return
    per_table = _named_series(report)
    every = [g for t in report.tables for g in t.groups]
    for col, _ in layout.columns:
        row_metric = f"{layout.attack_row}/{col}"
        run_level = not any(row_metric in g.stats for g in every) and any(col in g.stats for g in every)
        metric = col if run_level else row_metric
        lines: list[Series] = []
        for table, where, named in per_table:
            for name, members in named:
                _add_line(lines, name, members, metric, True)
            for spec in [] if run_level else layout.controls:
                firsts: dict[float, Group] = {}
                for g in table.groups:
                    if g.x is not None and f"{spec['row']}/{col}" in g.stats:
                        firsts.setdefault(g.x, g)
                name = f"{spec['label']} ({where})" if where else spec["label"]
                _add_line(lines, name, list(firsts.values()), f"{spec['row']}/{col}", False)
        if any(s.attack for s in lines):
            report.series[metric] = lines


@dataclass
class TradeOff:
    """One attack setting's line of the privacy-utility figure (:func:`privacy_utility`).

    ``points``: ``(the swept value as printed, utility, leakage)`` per setting in the runs' order
    (a multirun's first value first: no defence in the recipes); ``controls``: ``(label, the
    control row's leakage at each setting)`` (the layout's controls, not its checks); ``chance``: the leakage of a guess (the metric's
    ``chance`` beside it, e.g. ``retrieval/hog/chance``) at each setting, where the runs have it."""

    label: str
    points: list[tuple[str, Stat, Stat]]
    controls: list[tuple[str, list[float]]]
    chance: list[float]


def privacy_utility(report: Report) -> dict[str, list[TradeOff]]:
    """The privacy-utility figure's lines of a defence sweep: ``{leakage metric (the attack row's
    <y>): [TradeOff per table and attack setting]}`` for each ``y`` of the layout's
    ``privacy_utility`` against its ``x`` (a run metric: ``utility/h_acc@3``). Empty when the
    report is no defence sweep (:func:`defence_sweep`), the layout names no figure, or no
    setting has both numbers."""
    layout = report.layout
    spec = layout.privacy_utility if layout is not None else None
    if not spec or report.defence is None or not report.tables:
        return {}
    out: dict[str, list[TradeOff]] = {}
    for y in spec["y"]:
        leak = f"{layout.attack_row}/{y}"
        chance_key = f"{layout.attack_row}/{y.rsplit('/', 1)[0]}/chance" if "/" in y else None
        lines = []
        for _, _, named in _named_series(report):
            for name, members in named:
                pts = [(report.x_labels.get(g.x, f"{g.x:g}"), u, v) for g in members
                       if (u := g.stats.get(spec["x"])) is not None and u.mean is not None
                       and (v := g.stats.get(leak)) is not None and v.mean is not None]
                if not pts:
                    continue
                controls = []
                for c in (c for c in layout.controls if not c.get("check")):  # the controls, not the checks
                    values = [s.mean for g in members if (s := g.stats.get(f"{c['row']}/{y}")) is not None
                              and s.mean is not None]
                    if values:
                        controls.append((c["label"], values))
                chance = [s.mean for g in members if chance_key and (s := g.stats.get(chance_key)) is not None
                          and s.mean is not None]
                lines.append(TradeOff(name, pts, controls, chance))
        if lines:
            out[leak] = lines
    return out


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
            report.answers.append(Answer(table.title, table.settings, skey[0], with_overrides(skey[0], extra), value,
                                         count_at(points[hit][2]) if hit is not None else None,
                                         [(x, s) for x, s, _ in points], below))
