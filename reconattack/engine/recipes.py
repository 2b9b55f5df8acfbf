"""Reproduction recipes: one script per paper table in ``experiments/`` (``python
experiments/cfgan_table1.py --scale demo``).

A :class:`Recipe` names the Hydra multiruns a table needs and the directories that get a report.
It has two scales: ``demo`` runs on CPU on the embedded data (the demo experiments; its ``about``
text says what it stands in for) and ``paper`` runs the paper experiments (GPUs and the datasets
under ``paths.data_dir``). :func:`plan` turns a recipe into the commands
``python -m reconattack.run -m ... hydra.sweep.dir=OUT/<sweep>`` and ``python -m
reconattack.report OUT/<dir>``; :func:`execute` runs them one after the other with
:mod:`subprocess` and stops at the first command that fails. A multirun whose jobs partly failed
(it exits 1 after writing ``sweep_status.json``, :mod:`reconattack.engine.sweeps`) still gets its report;
the recipe then stops, says which jobs failed, and continues where it stopped when run again with
``--resume`` (finished runs are kept, :mod:`reconattack.engine.resume`).

The command line (:func:`main`)::

    python experiments/NAME.py [--scale demo|paper] [--dry-run] [--out DIR] [--launcher slurm]
                               [--resume] [OVERRIDE ...]

Each ``OVERRIDE`` goes to every multirun of the recipe. One that sets a key the recipe sets
replaces the recipe's value (``seed=0,1,2``, ``threat.key_share=0.1,0.7``), any other is added
(``paths.data_dir=/data``, ``trainer=ddp``; ``++attack.steps.ivr=100`` in a multirun of several
attacks: ``++`` adds the key where an attack lacks it, and an attack ignores steps of stages it
does not have). The multiruns run with this checkout's package (``PYTHONPATH``), so a recipe
always runs the code next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconattack.engine.sweeps import STATUS_FILE, describe_job
from reconattack.errors import ConfigError
from reconattack.utils.config import CONF_DIR, PROJECT_ROOT

SCALES = ("demo", "paper")
#: job directory of a multirun whose runs a later multirun of the recipe loads by seed
SEED_SUBDIR = "seed${seed}"
#: paths written into override values without quotes
_SAFE = re.compile(r"^[A-Za-z0-9_./-]+$")


@dataclass(frozen=True)
class Checkpoint:
    """The override ``attack.checkpoints.<stage>=`` the ``<stage>.ckpt`` of the run with the same
    seed in an earlier multirun of the recipe (``sweep``, whose job directories are named by seed:
    :attr:`Sweep.by_seed`), e.g. the FFHQ evaluation of the CelebA-HQ model."""

    stage: str
    sweep: str


@dataclass(frozen=True)
class Sweep:
    """One Hydra multirun of a recipe.

    Attributes:
        dir: its directory below the recipe's output directory (``hydra.sweep.dir``).
        overrides: what it runs, e.g. ``("+experiment=avih_attack_lfw",
            "threat.key_share=0.01,0.03,0.1,0.7")``; the scale's seeds are added (``seed=...``).
        by_seed: name its job directories ``seed<N>`` (``hydra.sweep.subdir``), so that a later
            multirun can load a run's checkpoints (:class:`Checkpoint`). Such a multirun sweeps
            nothing but the seed.
    """

    dir: str
    overrides: tuple[str | Checkpoint, ...]
    by_seed: bool = False


@dataclass(frozen=True)
class Scale:
    """A recipe at one scale: its multiruns in order, the directories (below the output
    directory) that get a report, the default seeds, and what this scale runs (for the demo:
    what it stands in for)."""

    sweeps: tuple[Sweep, ...]
    reports: tuple[str, ...]
    seeds: str
    about: str


@dataclass(frozen=True)
class Recipe:
    """A paper table: ``name`` (the script's name), ``table`` (which paper and table),
    ``description``, and its :class:`Scale` per scale name (``demo``, ``paper``)."""

    name: str
    table: str
    description: str
    scales: dict[str, Scale] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One command of a planned recipe: ``kind`` ``sweep`` (a multirun writing ``dir``) or
    ``report`` (the report of ``dir``)."""

    kind: str
    argv: tuple[str, ...]
    dir: Path


# ----------------------------------------------------------------------------- planning
def _quoted(path: Path) -> str:
    """``path`` as a Hydra override value (quoted when it has characters the grammar reads)."""
    text = str(path)
    if _SAFE.match(text.replace(SEED_SUBDIR, "seed")):
        return text
    return "'" + text + "'"


def _check_out(out: Path) -> None:
    bad = sorted({c for c in str(out) if c in "'\\$"})
    if bad:
        raise ConfigError(f"--out {out}: the path may not contain {' '.join(bad)} (Hydra reads them "
                          f"in override values); choose another directory")


def _parse(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.append(parser.parse_override(text))
        except HydraException as exc:
            msg = " ".join(str(exc).split())
            raise ConfigError(f"cannot parse the override {text!r}: {msg}") from None
    return parsed


def _key(override) -> str:
    """The key an override sets, without ``+``/``++``/``~`` (``face@threat.service``, ``seed``)."""
    return override.get_key_element().lstrip("+~")


def available_launchers() -> list[str]:
    """The launcher presets (``conf/launcher/*.yaml``)."""
    return sorted(p.stem for p in (CONF_DIR / "launcher").glob("*.yaml"))


def _render(item: str | Checkpoint, out: Path, done: dict[str, Sweep], sweep: Sweep) -> str:
    if isinstance(item, str):
        return item
    ref = done.get(item.sweep)
    if ref is None or not ref.by_seed:
        raise ValueError(f"recipe sweep {sweep.dir!r} loads a checkpoint of {item.sweep!r}, which is "
                         f"not an earlier multirun of the recipe with job directories by seed (by_seed)")
    path = out / item.sweep / SEED_SUBDIR / "checkpoints" / f"{item.stage}.ckpt"
    return f"attack.checkpoints.{item.stage}={_quoted(path)}"


def plan(recipe: Recipe, scale: str, out: Path, extra: Sequence[str] = (), launcher: str | None = None,
         resume: bool = False) -> list[Step]:
    """The commands that run ``recipe`` at ``scale`` into ``out``: its multiruns, then its reports.

    ``extra`` overrides go to every multirun (replacing the recipe's value of a key it sets, else
    added); ``launcher`` adds ``+launcher=<name>`` (``conf/launcher/``); ``resume`` adds
    ``resume=true`` (finished runs are kept, a stopped one continues). Raises
    :class:`~reconattack.errors.ConfigError` for an override that cannot be parsed or that the
    recipe must own, and for an unknown launcher.
    """
    if scale not in recipe.scales:
        raise ConfigError(f"--scale {scale}: recipe {recipe.name} has {sorted(recipe.scales)}")
    out = Path(out).absolute()
    _check_out(out)
    if launcher is not None and launcher not in available_launchers():
        raise ConfigError(f"--launcher {launcher}: no conf/launcher/{launcher}.yaml "
                          f"(available: {', '.join(available_launchers())})")
    extra = list(extra)
    extra_parsed = _parse(extra)
    for text, o in zip(extra, extra_parsed):
        if _key(o).startswith("hydra.sweep.") or _key(o) in ("hydra.mode",):
            raise ConfigError(f"{text}: {_key(o)} is set by the recipe (its output directory: --out)")
    spec = recipe.scales[scale]
    python = [sys.executable, "-m"]
    steps: list[Step] = []
    done: dict[str, Sweep] = {}
    for sweep in spec.sweeps:
        items = [_render(item, out, done, sweep) for item in sweep.overrides] + [f"seed={spec.seeds}"]
        keys = [_key(o) for o in _parse(items)]
        for text, o in zip(extra, extra_parsed):
            if _key(o) in keys:
                items[keys.index(_key(o))] = text
            else:
                items.append(text)
                keys.append(_key(o))
        if sweep.by_seed:
            swept = [t for t, o in zip(items, _parse(items)) if o.is_sweep_override() and _key(o) != "seed"]
            if swept:
                raise ConfigError(
                    f"{swept[0]}: multirun {sweep.dir} may sweep only the seed (a later multirun loads "
                    f"its runs by seed); run `python -m reconattack.run -m` yourself for other sweeps")
        if launcher is not None:
            items.append(f"+launcher={launcher}")
        if resume:
            items.append("resume=true")
        items.append(f"hydra.sweep.dir={_quoted(out / sweep.dir)}")
        if sweep.by_seed:
            items.append(f"hydra.sweep.subdir={SEED_SUBDIR}")
        steps.append(Step("sweep", (*python, "reconattack.run", "-m", *items), out / sweep.dir))
        done[sweep.dir] = sweep
    for rel in spec.reports:
        steps.append(Step("report", (*python, "reconattack.report", str(out / rel)), out / rel))
    return steps


# ----------------------------------------------------------------------------- running
def child_env() -> dict[str, str]:
    """The environment of the recipe's commands: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _job_failures(sweep_dir: Path) -> list[str]:
    path = sweep_dir / STATUS_FILE
    if not path.is_file():
        return []
    jobs = json.loads(path.read_text())
    return [describe_job(j) for j in jobs if j["status"] != "finished"]


def _has_runs(path: Path) -> bool:
    return path.is_dir() and next(path.rglob("metrics.json"), None) is not None


def execute(steps: Sequence[Step], runner: Callable[..., subprocess.CompletedProcess] | None = None,
            env: dict[str, str] | None = None) -> int:
    """Run the planned ``steps`` in order; returns the exit status (0, or 1 when a command failed).

    The multiruns run first; the first that fails (a non-zero exit) stops them. Then every report
    whose directory holds finished runs is written (also the failed multirun's, when some of its
    jobs finished: the report lists what ran, ``sweep_status.json`` what failed), and the path of
    each report is printed. ``runner(argv, env=...)`` runs one command (:func:`subprocess.run`).
    """
    runner = runner or subprocess.run
    env = env if env is not None else child_env()
    sweeps = [s for s in steps if s.kind == "sweep"]
    reports = [s for s in steps if s.kind == "report"]
    failure: list[str] = []
    for i, step in enumerate(sweeps, 1):
        print(f"\n# [{i}/{len(sweeps)}] {shlex.join(step.argv)}", flush=True)
        rc = runner(list(step.argv), env=env).returncode
        if rc != 0:
            failure = [f"stopped: multirun {i} of {len(sweeps)} ({step.dir}) failed with exit status {rc}:",
                       f"  {shlex.join(step.argv)}"]
            jobs = _job_failures(step.dir)
            if jobs:
                failure += [f"{len(jobs)} job(s) did not finish (sweep_status.json):", *jobs]
            later = len(sweeps) - i
            failure.append(f"{later} later multirun(s) not run; fix the cause and run the recipe again "
                           f"with --resume (finished runs are kept)")
            break
    written: list[Path] = []
    for step in reports:
        if failure and not _has_runs(step.dir):
            continue
        print(f"\n# report: {shlex.join(step.argv)}", flush=True)
        rc = runner(list(step.argv), env=env).returncode
        if rc != 0:
            failure.append(f"report of {step.dir} failed with exit status {rc}: {shlex.join(step.argv)}")
        else:
            written.append(step.dir / "report.md")
    print()
    for path in written:
        print(f"report: {path}")
    if failure:
        print("\n".join(failure), flush=True)
        return 1
    return 0


def describe(recipe: Recipe, scale: str, steps: Sequence[Step]) -> str:
    """The dry-run text: what the recipe is, then its commands, one a line (runnable as printed
    with this checkout on ``PYTHONPATH``)."""
    spec = recipe.scales[scale]
    lines = [f"# {recipe.name}: {recipe.table} ({scale} scale)"]
    lines += [f"# {line}" for line in _wrap(f"{recipe.description} {spec.about}")]
    lines.append(f"# commands run with PYTHONPATH={PROJECT_ROOT}")
    lines += [shlex.join(s.argv) for s in steps]
    return "\n".join(lines)


def _wrap(text: str, width: int = 98) -> list[str]:
    import textwrap

    return textwrap.wrap(" ".join(text.split()), width=width)


def _existing(steps: Sequence[Step]) -> Path | None:
    for step in steps:
        if step.kind == "sweep" and step.dir.is_dir() and any(step.dir.iterdir()):
            return step.dir
    return None


def default_out(recipe: Recipe, scale: str) -> Path:
    """``$RECONATTACK_OUTPUTS/experiments/<recipe>/<scale>`` (default ``./outputs``)."""
    return Path(os.environ.get("RECONATTACK_OUTPUTS", "outputs")) / "experiments" / recipe.name / scale


def main(recipe: Recipe, argv: Sequence[str] | None = None) -> int:
    """The command line of a recipe script; returns the exit status (2 for a user error, printed
    as one line)."""
    demo = recipe.scales.get("demo")
    paper = recipe.scales.get("paper")
    epilog = "\n\n".join(f"{name}: {' '.join(spec.about.split())}" for name, spec in
                         (("demo", demo), ("paper", paper)) if spec is not None)
    ap = argparse.ArgumentParser(prog=f"experiments/{recipe.name}.py",
                                 description=f"{recipe.table}. {' '.join(recipe.description.split())}",
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(recipe.scales), default="demo",
                    help="demo: CPU, embedded data, minutes; paper: the paper experiments (GPUs, datasets)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default: $RECONATTACK_OUTPUTS/experiments/<recipe>/<scale>, "
                         "$RECONATTACK_OUTPUTS defaulting to ./outputs)")
    ap.add_argument("--launcher", default=None,
                    help="a Hydra launcher preset of conf/launcher/ for every multirun (e.g. slurm)")
    ap.add_argument("--resume", action="store_true",
                    help="continue in an existing output directory: finished runs are kept, stopped "
                         "ones continue (resume=true)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every multirun; one for a key the "
                    "recipe sets replaces its value (seed=0,1,2)")
    args = ap.parse_args(argv)
    out = args.out if args.out is not None else default_out(recipe, args.scale)
    try:
        steps = plan(recipe, args.scale, out, args.overrides, launcher=args.launcher, resume=args.resume)
        if args.dry_run:
            print(describe(recipe, args.scale, steps))
            return 0
        existing = _existing(steps)
        if existing is not None and not args.resume:
            raise ConfigError(f"{existing} already holds runs; continue them with --resume, or choose "
                              f"another --out")
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 2
    print(describe(recipe, args.scale, steps), flush=True)
    return execute(steps)
