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
the attack), ``checks`` (rows shown after the controls that have no images of their own),
``settings`` (config key -> label: what a table's numbers depend on, stated under it), ``columns`` (metric -> ``higher`` | ``lower`` is better), ``tables_by`` /
``blocks_by`` (config keys: a table / a block of columns per value, e.g. ``data.name``),
``sweep`` (``{key, label}``: the swept threat parameter), ``threshold`` (the smallest swept value
at which the attack's ``metric`` exceeds the ``baseline`` control's by more than ``margin``, mean
over seeds of the per-run difference; ``count`` names the metric that says how many images that
is; ``--margin`` overrides the margin) and ``paper`` (a YAML file of the paper's published
numbers, relative to ``conf/``: each entry's ``match`` — dotted config keys and values — says
which runs it belongs beside; shown marked †, never mixed with ours). ``attack.label`` names the
attack's rows; a row shows, beside it, the overrides that tell it apart from the other rows of
the same label in its table.

The package, by what it does: :mod:`~reconattack.report.runs` (finding and grouping runs),
:mod:`~reconattack.report.tables` (the paper layout and tables), :mod:`~reconattack.report.figures`
(plots and sample grids), :mod:`~reconattack.report.writers` (markdown, CSV, LaTeX) and
:mod:`~reconattack.report.cli` (the command line and the multirun callback).
"""

from reconattack.report.cli import ReportCallback, main
from reconattack.report.runs import Options, find_jobs, matches
from reconattack.report.tables import Report, build_report, load_paper
from reconattack.report.writers import tex_escape, write_reports

__all__ = ["Options", "Report", "ReportCallback", "build_report", "find_jobs", "load_paper", "main",
           "matches", "tex_escape", "write_reports"]
