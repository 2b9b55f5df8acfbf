"""Multiruns in which a failed job does not stop the others (SPEC §8).

In a Hydra multirun, :func:`reconattack.run.main` runs each job under :func:`job_guard`: an
exception is logged with its traceback (console and the job's ``run.log``), recorded in the job
directory as ``failed.txt`` (first line ``Type: message``, then the traceback) and the job
returns, so the launcher goes on with the next job — with every launcher, also the SLURM one,
whose jobs run in their own processes. At the end :class:`SweepStatusCallback` (configured in
``conf/hydra/default.yaml``, so every sweep has it) reads every job directory, writes
``sweep_status.json`` and, when a job failed or did not finish (no ``metrics.json``: killed,
timed out), names each with its overrides and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from reconattack.utils.files import atomic_write_text

log = logging.getLogger(__name__)

FAILURE_FILE = "failed.txt"
STATUS_FILE = "sweep_status.json"


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(run_dir: Path, exc: BaseException) -> Path:
    """Write ``run_dir/failed.txt``: ``Type: message`` on the first line, then the traceback."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ") + "\n\n" + "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))
    return atomic_write_text(Path(run_dir) / FAILURE_FILE, text)


def clear_failure(run_dir: Path) -> None:
    """Remove the ``failed.txt`` of an earlier attempt of this job (it is being run again)."""
    (Path(run_dir) / FAILURE_FILE).unlink(missing_ok=True)


@contextmanager
def job_guard(run_dir: Path, is_user_error: Callable[[BaseException], bool] | None = None):
    """Inside a multirun: record an exception of the job (:func:`record_failure`), log it (one
    line for a user error, else with its traceback) and swallow it, so the sweep goes on.
    Outside a multirun it propagates; KeyboardInterrupt and SystemExit always do."""
    try:
        yield
    except Exception as exc:
        if not in_multirun():
            raise
        record_failure(run_dir, exc)
        user = is_user_error is not None and is_user_error(exc)
        log.error("job failed, the sweep goes on (%s): %s: %s", Path(run_dir) / FAILURE_FILE,
                  type(exc).__name__, exc, exc_info=None if user else exc)


def job_status(job_dir: Path) -> dict[str, Any]:
    """``{"dir", "overrides", "status": finished | failed | unfinished, "error"}`` of one job."""
    ofile = job_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in (yaml.safe_load(ofile.read_text()) or [])] if ofile.is_file() else []
    failed = job_dir / FAILURE_FILE
    if failed.is_file():
        status, error = "failed", failed.read_text().splitlines()[0] if failed.stat().st_size else ""
    elif (job_dir / "metrics.json").is_file():
        status, error = "finished", None
    else:
        status, error = "unfinished", "no metrics.json (killed, timed out, or still running)"
    return {"dir": str(job_dir), "overrides": overrides, "status": status, "error": error}


def job_path_key(root: Path, job_dir: Path) -> tuple:
    """Sort key of a job directory below ``root``: its path parts, job numbers as numbers
    (``2`` before ``10``)."""
    return tuple((0, int(x)) if x.isdigit() else (1, x) for x in job_dir.relative_to(root).parts)


def describe_job(job: dict[str, Any]) -> str:
    """One line for a job that did not finish (a :func:`job_status` entry): its overrides, status,
    error and directory."""
    return f"  [{' '.join(job['overrides'])}] {job['status']}: {job['error']} ({job['dir']})"


def sweep_status(root: Path) -> list[dict[str, Any]]:
    """:func:`job_status` of every job directory below the sweep directory ``root`` (the
    directories with a ``.hydra/overrides.yaml``), in job order."""
    jobs = [p.parent.parent for p in Path(root).rglob(".hydra/overrides.yaml")]
    jobs = [j for j in jobs if j != Path(root)]
    return [job_status(j) for j in sorted(jobs, key=lambda j: job_path_key(Path(root), j))]


class SweepStatusCallback(Callback):
    """Hydra callback: at the end of a multirun, ``sweep_status.json`` in the sweep directory and
    a non-zero exit naming every failed or unfinished job (see the module docstring)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(str(config.hydra.sweep.dir))
        jobs = sweep_status(root)
        atomic_write_text(root / STATUS_FILE, json.dumps(jobs, indent=1))
        bad = [j for j in jobs if j["status"] != "finished"]
        if not bad:
            return
        lines = [f"sweep {root}: {len(bad)} of {len(jobs)} job(s) did not finish:"]
        lines += [describe_job(j) for j in bad]
        message = "\n".join(lines)
        log.error(message)
        print(message)
        raise SystemExit(1)  # not an Exception: Hydra's callback runner does not swallow it
