"""Finding and grouping runs: the jobs below a directory, their settings, and each setting's numbers.

A job is a run directory (``.hydra/overrides.yaml``, ``metrics.json`` or ``failed.txt``); a
setting (:class:`Group`) is the jobs with the same Hydra overrides but for the ignored keys
(``seed``, ``resume``, ``--ignore``); each metric of a setting is a :class:`Stat`, mean ± sample
std over its finished runs.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconattack.engine.sweeps import FAILURE_FILE, job_path_key, job_status
from reconattack.errors import ConfigError, InputNotFoundError

MAIN_METRICS = ("test/psnr", "test/ssim", "test/fid", "test/lpips", "test/clip")


MISSING = "missing: "


DEFAULT_IGNORE = ("seed", "resume")


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
            (:func:`reconattack.engine.tracking.log_report_tables`).
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


# ------------------------------------------------------------------------------ configs

def lookup(config: Any, key: str) -> Any:
    """``config`` at the dotted ``key`` (None when absent)."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b if isinstance(a, bool) and isinstance(b, bool) else False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b


def matches(config: dict, match: dict) -> bool:
    """True when ``config`` holds every dotted key of ``match`` with its value."""
    return all(same_value(lookup(config, k), v) for k, v in match.items())


def as_override(value: Any) -> str:
    """``value`` as a Hydra override writes it (``[a,b]``, ``true``, ``null``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    return "null" if value is None else str(value)


# ------------------------------------------------------------------------------ settings

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


def group_jobs(jobs: list[Job], options: Options) -> tuple[list[Group], list[str]]:
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


def metric_names(groups: list[Group]) -> list[str]:
    """The metrics of the finished runs: every key of their ``metrics.json`` that holds a number or
    a text (not the collapse checks' ``warnings`` list, which marks rows instead)."""
    names = {k for g in groups for j in g.finished for k, v in j.metrics.items() if not isinstance(v, (list, dict))}
    return sorted(names, key=lambda k: (k not in MAIN_METRICS,
                                        MAIN_METRICS.index(k) if k in MAIN_METRICS else 0, k))


def distinguish(items: list[tuple[Any, dict[str, str]]],
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
        return "default" if found is None else as_override(found)

    return {i: [(k, value(i, d, k)) for k in varying] for i, d in items}


def with_overrides(label: str, extra: list[tuple[str, str]], rename: dict[str, str] | None = None) -> str:
    rename = rename or {}
    text = ", ".join(f"{rename.get(k, k)}={v}" for k, v in extra)
    return f"{label} ({text})" if text else label
