"""The report's files: ``report.md``, ``report.csv`` / ``report_layout.csv`` and ``report.tex``
(:func:`write_reports` also draws the plots and grids, and logs the tables to W&B).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

from reconattack.metrics.diagnostics import MARK, MEANING, warnings_of
from reconattack.report.figures import (
    figure_path,
    write_grids,
    write_plots,
    write_privacy_utility,
    write_roc_plots,
)
from reconattack.report.runs import EMPTY, MISSING, Options, Stat, lookup
from reconattack.report.tables import (
    ARROWS,
    Report,
    Row,
    Table,
    build_report,
    group_flagged,
    reported,
)
from reconattack.utils.files import atomic_write_text

TEX_ARROWS = {"higher": r"$\uparrow$", "lower": r"$\downarrow$"}


# ------------------------------------------------------------------------------ writing

def write_reports(root: Path, options: Options | None = None) -> list[Path]:
    """Build the report of ``root`` and write its files into ``root`` (see the module
    docstring); returns the paths written."""
    report = build_report(root, options)
    root = report.root
    written = _write_csv(report)
    plots = write_plots(report)
    trade = write_privacy_utility(report)
    rocs = write_roc_plots(report)
    grids = write_grids(report)
    written.append(atomic_write_text(root / "report.tex", _tex(report)))
    md = _markdown(report, plots, grids, rocs, trade)
    written.insert(0, atomic_write_text(root / "report.md", md))
    if report.options.wandb:  # the jobs' logger was W&B: the tables there too
        from reconattack.engine.tracking import log_report_tables

        log_report_tables(root, report.jobs, [p for p in written if p.suffix == ".csv"])
    return written + plots + trade + [p for p, _ in rocs] + [f for p, _ in grids for f in (p, figure_path(p))]


# ------------------------------------------------------------------------------ markdown

def _md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def _md_cell(s: Stat) -> str:
    """A cell of a markdown table: ``missing`` for a metric reported missing."""
    return "missing" if s.text.startswith(MISSING) else s.text.replace("|", "\\|")


def _markdown(report: Report, plots: list[Path], grids: list[tuple[Path, list[str]]],
              rocs: list[tuple[Path, str]] = (), trade: list[Path] = ()) -> str:
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
    md += _md_leakage(report)
    reasons: dict[str, None] = {}

    def cell(s: Stat) -> str:
        if s.text.startswith(MISSING):
            reasons.setdefault(s.text[len(MISSING):], None)
        return _md_cell(s)

    md += ["", "## All metrics", ""]
    md += _md_table(["setting", "runs", "no result"] + report.metrics,
                    [[_marked(g.setting, group_flagged(g) > 0), str(len(g.finished)), str(len(g.jobs) - len(g.finished))]
                     + [cell(g.stats.get(m, EMPTY)) for m in report.metrics] for g in report.groups])
    if any(group_flagged(g) for g in report.groups):
        md += ["", f"{MARK} a run of the setting was flagged by its collapse checks (\"Warnings\" below)."]
    if report.tables:
        md += ["", "## Paper layout"]
    for table in report.tables:
        heading = report.layout.title + (f": {table.title}" if table.title else "")
        several = len(table.blocks) > 1
        head = ["row"] + [f"{b + ': ' if several else ''}{c} {ARROWS[d]}" for b in table.blocks for c, d in table.columns]
        lines = [[_marked(r.label, r.flagged).replace("|", "\\|")]
                 + [cell(r.cells.get(b, {}).get(c, EMPTY)) for b in table.blocks for c, _ in table.columns]
                 for r in table.rows]
        md += ["", f"### {heading}", ""] + _md_table(head, lines)
        legend = _legend(table)
        if legend:
            md += ["", legend[0], ""] + [f"- {line}".replace("|", "\\|") for line in legend[1:]]
        if table.settings:
            md += ["", f"Settings: {table.settings}."]
        if table.paper_note:
            md += ["", table.paper_note]
        if table.unreported:
            md += ["", "Left out, no run of this table reported them: "
                   + ", ".join(f"`{c}`" for c in table.unreported) + "."]
    if report.layout is not None and report.layout.threshold is not None and report.tables:
        md += _md_answers(report)
    if plots:
        md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    if trade:
        spec = report.layout.privacy_utility
        md += ["", "## Privacy–utility", "",
               f"What each setting of {report.layout.sweep_label} leaves of the features' use (`{spec['x']}`, "
               f"measured in the same run) against what the attack still reads (the attack row's "
               + ", ".join(f"`{y}`" for y in spec["y"]) + "): a point per setting (mean over its runs), joined "
               "in the sweep's order, the first setting a star; dashed: the controls' rows; dotted: chance.", ""]
        md += [f"![{p.stem}]({p.name})" for p in trade]
    if rocs:
        md += ["", "## ROC at low FAR", "", "Each verification row's exact ROC in log-log axes (the attack's row "
               "solid, the others dashed); a curve starts at the smallest FAR its impostor pairs measure.", ""]
        for path, caption in rocs:
            md += [f"![{path.stem}]({path.name})", "", caption, ""]
    if grids or report.notes:
        md += ["", "## Sample images", ""]
        for path, titles in grids:
            figure = figure_path(path)
            md += [f"![{figure.stem}]({figure.name})", "", "Columns: "
                   + ", ".join(f"`{t}`" for t in titles) + f" (the first {report.options.grid_rows} held-out images at most, from the first "
                   f"finished run of each setting). The tiles at their own pixels, untitled: `{path.name}`.", ""]
        md += [f"- {n}" for n in report.notes]
    flagged = [j for j in jobs if j.status == "finished" and warnings_of(j.metrics)]
    if flagged:
        md += ["", "## Warnings", "", f"The runs' collapse checks (`warnings` in their metrics.json; "
               f"conf/diagnostics/): {MEANING}.", ""]
        md += _md_table(["job", "row", "check", "value", "threshold", "message"],
                        [[j.name, str(w.get("row")), str(w.get("check")), str(w.get("value", "")),
                          str(w.get("threshold", "")), str(w.get("message", ""))]
                         for j in flagged for w in warnings_of(j.metrics)])
    bad = [j for j in jobs if j.status != "finished"]
    if bad:
        common = set(report.common)
        md += ["", "## Jobs without results", ""]
        md += _md_table(["job", "status", "overrides", "error"],
                        [[j.name, j.status, " ".join(o for o in j.overrides if o not in common).replace("|", "\\|"),
                          (j.error or "").replace("|", "\\|")] for j in bad])
    if reasons:
        md += ["", "Metrics the runs reported as missing (no pretrained weights, or too few pairs to measure):", ""] + [f"- {r}" for r in reasons]
    return "\n".join(md) + "\n"


EMBEDDING_WORDS = {"clip": "CLIP ViT-B-32 embeddings", "hog": "HOG descriptors (no learnt weights)"}


def _pct(stat: Stat) -> str:
    return f"{100 * stat.mean:.0f} %"


def _leak_words(g, row: str, controls: list[dict], far: str) -> list[str]:
    """What leaked, in words, for metrics row ``row`` of group ``g`` beside its controls' rows."""
    out = []
    for emb in ("clip", "hog"):  # the first embedding with numbers
        key = f"retrieval/{emb}/rank1"
        ours = g.stats.get(f"{row}/{key}")
        if ours is None or ours.mean is None:
            continue
        n = g.stats.get(f"{row}/retrieval/{emb}/n")
        chance = g.stats.get(f"{row}/retrieval/{emb}/chance")
        among = f"among {n.mean:g}" if n is not None and n.mean is not None else "among the test set's"
        text = (f"reconstructions found their own original {among} in {_pct(ours)} of cases (nearest by "
                f"{EMBEDDING_WORDS[emb]})" + (f", chance {100 * chance.mean:.0f} %" if chance and chance.mean else ""))
        others = [f"{c['label']}: {_pct(st)}" for c in controls
                  if (st := g.stats.get(f"{c['row']}/{key}")) is not None and st.mean is not None]
        out.append(text + ("; " + "; ".join(others) if others else "") + ".")
        break
    tpr = g.stats.get(f"{row}/tpr@far")
    if tpr is not None and tpr.mean is not None:
        others = [f"{c['label']}: {_pct(st)}" for c in controls
                  if (st := g.stats.get(f"{c['row']}/tpr@far")) is not None and st.mean is not None]
        out.append(f"At FAR {far}, the evaluation model accepted {_pct(tpr)} of the genuine pairs made with the "
                   "reconstructions" + ("; " + "; ".join(others) if others else "") + ".")
    return out


def _md_leakage(report: Report) -> list[str]:
    """"What leaked", opening the report: per table, block and attack setting, the retrieval of
    each reconstruction's own original and the verification TPR in words, from the numbers the
    tables print (means over the setting's runs), beside the controls'."""
    layout = report.layout
    if layout is None or not report.tables:
        return []
    lines = []
    for table in report.tables:
        for r in (r for r in table.rows if r.kind == "attack"):
            for block, g in r.groups.items():
                where = ", ".join(x for x in (table.title, block if len(table.blocks) > 1 else "") if x)
                far = lookup(g.config, "metrics.far")
                controls = [c for c in layout.controls if not c.get("check")]  # not the stored rows
                words = _leak_words(g, r.prefix, controls, f"{far:g}" if isinstance(far, (int, float)) else "far")
                runs = len(g.finished)
                if words:
                    where = ", ".join(x for x in (where, f"means of {runs} runs" if runs > 1 else "") if x)
                    lines.append(f"- **{r.label}**" + (f" ({where})" if where else "") + ": " + " ".join(words))
    if not lines:
        return []
    return ["", "## What leaked", "", *lines]


def _marked(label: str, flagged: bool) -> str:
    """A row's or a setting's label, with the collapse mark when a run of it was flagged."""
    return f"{label} {MARK}" if flagged else label


def _legend(table: Table) -> list[str]:
    """Under a table with flagged rows: what the mark means, then a line per row, block and
    warning (how many of the setting's runs have it, which)."""
    lines = []
    for r in table.rows:
        for f in r.flags():
            where = f", {f.block}" if len(table.blocks) > 1 else ""
            runs = (f" ({len(f.jobs)} of {f.runs} runs: {', '.join(f.jobs)})" if f.runs > 1
                    else f" (run {f.jobs[0]})" if f.jobs[0] != "." else "")
            lines.append(f"{r.label}{where}{runs}: {f.message}")
    if not lines:
        return []
    return [f"{MARK} flagged by the runs' collapse checks (`warnings` in metrics.json): {MEANING}."] + lines


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
    settings = dict.fromkeys(a.settings for a in report.answers if a.settings)
    if settings:  # what the answer depends on (e.g. the TPR@FAR protocol), as under its table
        md += ["", "Settings: " + " | ".join(settings) + "."]
    return md


# ------------------------------------------------------------------------------ CSV

def _write_csv(report: Report) -> list[Path]:
    root = report.root
    with io.StringIO(newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "runs", "no result"] + [c for m in report.metrics for c in (f"{m} mean", f"{m} std", f"{m} n")]
                   + ["flagged runs"])
        for g in report.groups:
            row = [g.setting, len(g.finished), len(g.jobs) - len(g.finished)]
            for m in report.metrics:
                s = g.stats.get(m, EMPTY)
                row += [s.mean, "" if s.std is None else s.std, s.n] if s.mean is not None else [s.text, "", s.n]
            w.writerow(row + [group_flagged(g)])
        out = [atomic_write_text(root / "report.csv", f.getvalue())]
    if report.tables:
        with io.StringIO(newline="") as f:
            w = csv.writer(f)
            w.writerow(["table", "block", "row", "source", "column", "mean", "std", "n", "text", "flagged runs"])
            for t in report.tables:
                for r in t.rows:
                    flagged = _flagged_runs(r)
                    for b in t.blocks:
                        for c, _ in t.columns:
                            s = r.cells.get(b, {}).get(c)
                            if s is None or not reported(s):
                                continue
                            w.writerow([t.title, b, r.of or r.label, r.source or "ours", c,
                                        "" if s.mean is None else s.mean, "" if s.std is None else s.std,
                                        "" if r.kind == "paper" else s.n, s.text,
                                        "" if r.kind == "paper" else flagged.get(b, 0)])
            out.append(atomic_write_text(root / "report_layout.csv", f.getvalue()))
    return out


def _flagged_runs(row: Row) -> dict[str, int]:
    """``{block: how many of its setting's runs flagged this row}``."""
    return {b: sum(bool(warnings_of(j.metrics, row.prefix)) for j in g.finished) for b, g in row.groups.items()}


# ------------------------------------------------------------------------------ LaTeX

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "†": r"$^\dagger$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
        MARK: r"\textsuperscript{(!)}"}


def tex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX tabular (special characters escaped, ± † ↑ ↓ as math)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_cell(s: Stat, digits: int) -> str:
    """A cell of a LaTeX table (math mode; ``($n=k$)`` when fewer runs reported it)."""
    if s.paper:
        return "$" + s.text.replace(" ± ", r" \pm ") + "$"
    if s.mean is None:
        return "missing" if s.text.startswith(MISSING) else (tex_escape(s.text) or "--")
    body = f"{s.mean:.{digits}f}" + (f" \\pm {s.std:.{digits}f}" if s.std is not None else "")
    return f"${body}$" + (f" ($n={s.n}$)" if s.n < s.runs else "")

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
                                  + [_tex_cell(g.stats.get(m, EMPTY), d) for m in cols]) + r" \\")
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
                label = tex_escape(_marked(r.label, r.flagged))
            cells = [_tex_cell(r.cells.get(b, {}).get(c, EMPTY), d) for b in t.blocks for c, _ in t.columns]
            out.append(" & ".join([label] + cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        legend = _legend(t)
        for text in (f"Settings: {t.settings}." if t.settings else "", t.paper_note,
                     legend[0] if legend else ""):
            if text:
                out += [r"\par\smallskip\footnotesize " + tex_escape(text)]
        out += [r"\end{table}", ""]
    return "\n".join(out)
