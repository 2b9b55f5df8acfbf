"""ROC files of the verification rows: every row with TPR@FAR keeps its scores' exact ROC in the
run directory, ``roc_<row>.csv`` (``far,tpr,threshold``; the first line the point that accepts
nothing, threshold ``inf``; :func:`reconattack.metrics.functional.roc_curve`). A reader takes TPR
at any FAR the pairs can measure from it; the report draws it in log-log axes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

PREFIX, SUFFIX = "roc_", ".csv"
HEADER = "far,tpr,threshold"


def roc_path(run_dir: Path, row: str) -> Path:
    """``roc_<row>.csv`` of a metrics row, its slashes as ``__`` (``service/original`` →
    ``roc_service__original.csv``; :func:`row_of` inverts it)."""
    return Path(run_dir) / f"{PREFIX}{row.replace('/', '__')}{SUFFIX}"


def row_of(path: Path) -> str:
    """The metrics row of a ``roc_<row>.csv`` path."""
    return Path(path).name[len(PREFIX):-len(SUFFIX)].replace("__", "/")


def write_rocs(run_dir: Path, curves: dict[str, dict]) -> list[Path]:
    """Write ``{row: {"far", "tpr", "threshold"}}`` (arrays of equal length) as ``roc_<row>.csv``,
    full float precision; returns the paths."""
    paths = []
    for row, roc in curves.items():
        path = roc_path(run_dir, row)
        table = np.stack([np.asarray(roc[k], dtype=np.float64) for k in ("far", "tpr", "threshold")], axis=1)
        np.savetxt(path, table, delimiter=",", header=HEADER, comments="", fmt="%.17g")
        paths.append(path)
    return paths


def read_rocs(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{row: {"far", "tpr", "threshold"}}`` of the ``roc_*.csv`` files of a run directory (one
    someone else made, for the report): a file that is not this module's three numeric columns
    under its header (truncated, edited, another tool's) is left out, never a traceback."""
    out = {}
    for path in sorted(Path(run_dir).glob(f"{PREFIX}*{SUFFIX}")):
        try:
            with open(path, encoding="utf-8") as f:
                if f.readline().strip() != HEADER:
                    continue
                with warnings.catch_warnings():  # an empty table is left out below, not announced
                    warnings.simplefilter("ignore", UserWarning)
                    table = np.loadtxt(f, delimiter=",", ndmin=2)
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if table.shape[1] != 3 or not table.shape[0]:
            continue
        out[row_of(path)] = {"far": table[:, 0], "tpr": table[:, 1], "threshold": table[:, 2]}
    return out


__all__ = ["read_rocs", "roc_path", "row_of", "write_rocs"]
