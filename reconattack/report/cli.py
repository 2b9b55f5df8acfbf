"""The command line, ``python -m reconattack.report DIR`` (:func:`main`), and the Hydra callback that
writes a multirun's report when it ends (:class:`ReportCallback`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from reconattack.errors import UserError
from reconattack.report.runs import DEFAULT_IGNORE, Options
from reconattack.report.writers import write_reports


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
