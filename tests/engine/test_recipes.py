"""Reproduction recipes (``experiments/*.py``, :mod:`reconattack.engine.recipes`): every recipe's
``--dry-run`` prints its commands and runs nothing; every job of every printed multirun composes
with the real configs (a typo in a recipe fails here); the rows of an ablation table are the same
model on every dataset; a demo recipe runs end to end at a tiny size; a failed multirun still gets
its report and stops the recipe; user mistakes are one-line errors."""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from reconattack.engine import recipes
from reconattack.errors import ConfigError
from tests.helpers import base_overrides, compose_cfg, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = ROOT / "experiments"
RECIPE_FILES = sorted(p for p in EXPERIMENTS_DIR.glob("*.py") if not p.name.startswith("_"))
SCALES = ("demo", "paper")
#: the paper tables the recipes must cover (CFGAN paper; AVIH attack paper)
PAPER_TABLES = {"cfgan_table1", "cfgan_table3", "cfgan_table4", "cfgan_table5", "cfgan_table6",
                "avih_table1_2", "avih_table3", "avih_table4", "avih_table5_6"}


def _script(path: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, RECONATTACK_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@functools.lru_cache(maxsize=None)
def _dry_run(name: str, scale: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    return _script(EXPERIMENTS_DIR / f"{name}.py", "--scale", scale, "--dry-run", "--out", out, *extra)


def _commands(stdout: str, module: str) -> list[list[str]]:
    """The printed commands that run ``python -m <module>``, as argument lists."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("#") or f"-m {module}" not in line:
            continue
        argv = shlex.split(line)
        i = argv.index(module)
        out.append(argv[i + 1:])
    return out


@functools.lru_cache(maxsize=None)
def _compose(job: tuple[str, ...]):
    return compose_cfg(list(job), hydra_config=True)


def _jobs(overrides: list[str]) -> list[tuple[list[str], object]]:
    """The jobs of one multirun with their composed configs: comma sweeps expanded (the command
    line's, and the sweeper params an experiment sets itself, e.g. demo_sift_baselines), the seeds
    but the first left out."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    axes = []
    for o, text in zip(parsed, overrides):
        if o.is_sweep_override():
            key = text.split("=", 1)[0]
            values = list(o.sweep_string_iterator())
            # the seed composes the same whatever its value: the first stands for the others
            axes.append([f"{key}={v}" for v in (values[:1] if key == "seed" else values)])
        else:
            axes.append([text])
    out = []
    for combo in itertools.product(*axes):
        job = list(combo)
        cfg = _compose(tuple(job))
        params = cfg.hydra.sweeper.get("params") or {}
        if not params:
            out.append((job, cfg))
            continue
        extra = [[f"{k}={v}" for v in str(vals).split(",")] for k, vals in params.items()]
        out += [(job + list(more), _compose(tuple(job + list(more)))) for more in itertools.product(*extra)]
    return out


def _missing(node, prefix: str = "") -> list[str]:
    """The keys of a plain config left at ``???``."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _missing(v, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in _missing(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def check_multirun(overrides: list[str]) -> list:
    """Compose every job of the multirun ``overrides`` (``-m`` dropped) with the real configs, as
    Hydra would before running it; raises on an unknown experiment, group or key, and on a
    mandatory value (``???``) left unset. Returns the composed job configs."""
    assert overrides[0] == "-m", overrides
    composed = []
    for job, cfg in _jobs(overrides[1:]):
        body = OmegaConf.to_container(cfg, resolve=False)
        body.pop("hydra")
        missing = _missing(body)
        assert not missing, f"{job}: mandatory values left unset: {missing}"
        # values the recipe builds from interpolations (checkpoint paths, job directories)
        if cfg.get("attack") is not None:
            OmegaConf.to_container(cfg.attack.checkpoints, resolve=True)
        composed.append((job, cfg))
    return composed


# ------------------------------------------------------------------------------ coverage
def test_every_paper_table_has_a_recipe():
    assert {p.stem for p in RECIPE_FILES} >= PAPER_TABLES


def test_every_recipe_is_listed_in_the_readmes():
    local = (EXPERIMENTS_DIR / "README.md").read_text()
    top = (ROOT / "README.md").read_text()
    assert "## Reproducing the paper tables" in top
    section = top.split("## Reproducing the paper tables", 1)[1].split("\n## ", 1)[0]
    for path in RECIPE_FILES:
        assert f"experiments/{path.name}" in section, path.name
        assert path.name in local, path.name


def test_make_lint_covers_the_recipes():
    lint = re.search(r"^lint:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "experiments" in lint.split()


# ------------------------------------------------------------------------------- dry run
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_dry_run_prints_the_commands_and_runs_nothing(path, scale, tmp_path):
    out = tmp_path / "out"
    res = _dry_run(path.stem, scale, str(out))
    assert res.returncode == 0, res.stderr
    runs, reports = _commands(res.stdout, "reconattack.run"), _commands(res.stdout, "reconattack.report")
    assert runs and reports, res.stdout
    assert all(r[0] == "-m" for r in runs)  # Hydra multiruns
    sweep_dirs = [next(o.split("=", 1)[1] for o in r if o.startswith("hydra.sweep.dir=")) for r in runs]
    assert all(d.strip("'").startswith(str(out)) for d in sweep_dirs)
    assert len(set(sweep_dirs)) == len(sweep_dirs)  # one directory per multirun
    assert all(Path(r[0]).is_relative_to(out) for r in reports)
    assert not out.exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_every_job_of_every_printed_command_composes(path, scale, tmp_path):
    out = tmp_path / "out"
    res = _dry_run(path.stem, scale, str(out))
    assert res.returncode == 0, res.stderr
    finals: dict[str, set[str]] = {}  # job directory pattern -> final stage of the runs there
    for argv in _commands(res.stdout, "reconattack.run"):
        composed = check_multirun(argv)
        for _job, cfg in composed:
            seed = cfg.seed
            subdir = OmegaConf.select(cfg, "hydra.sweep.subdir", throw_on_resolution_failure=False)
            if cfg.get("attack") is not None:
                if subdir == f"seed{seed}":
                    finals.setdefault(f"{cfg.hydra.sweep.dir}/seed{seed}", set()).add(cfg.attack.stages[-1])
                # a checkpoint loaded from an earlier multirun of the recipe: that run's final stage
                for stage, ckpt in OmegaConf.to_container(cfg.attack.checkpoints, resolve=True).items():
                    if ckpt:
                        run_dir, name = str(Path(ckpt).parent.parent), Path(ckpt).name
                        assert Path(ckpt).is_relative_to(out), ckpt
                        assert run_dir in finals, f"{ckpt}: no earlier multirun of the recipe writes it"
                        assert finals[run_dir] == {stage} and name == f"{stage}.ckpt", (ckpt, finals[run_dir])


def test_the_compose_check_catches_a_typo():
    check_multirun(["-m", "+experiment=cfgan_celebahq_no_sift", "seed=0,1"])
    with pytest.raises(Exception, match="cfgan_celebahq_no_sfit"):
        check_multirun(["-m", "+experiment=cfgan_celebahq_no_sfit", "seed=0"])
    with pytest.raises(Exception, match="stepz"):
        check_multirun(["-m", "+experiment=cfgan_celebahq", "attack.stepz.coarse=2"])
    with pytest.raises(Exception, match="no_such_service"):
        check_multirun(["-m", "+experiment=avih_attack_agedb30", "face@threat.service=arcface_ir50,no_such_service"])


def test_the_slurm_launcher_composes(tmp_path):
    res = _dry_run("avih_table4", "paper", str(tmp_path / "out"), "--launcher", "slurm")
    assert res.returncode == 0, res.stderr
    (argv,) = _commands(res.stdout, "reconattack.run")
    assert "+launcher=slurm" in argv
    job, cfg = check_multirun([*argv[:2], *(o for o in argv[2:] if not o.startswith("threat.key_share"))])[0]
    assert "submitit" in cfg.hydra.launcher._target_ and cfg.resume


# -------------------------------------------------------------------- what the tables hold
ABLATIONS = ("cfgan_table3", "cfgan_table4", "cfgan_table5", "cfgan_table6")


@pytest.mark.parametrize("name", ABLATIONS)
def test_a_row_is_the_same_model_on_every_dataset(name, tmp_path):
    """An ablation row (a multirun directory's last part, e.g. ``coarse_only``) trains and
    evaluates the same networks, losses and stages on every dataset (the CelebA-HQ ablation file,
    the same change applied to the LSUN experiments, the FFHQ evaluation of the CelebA-HQ model),
    and is named in the report as the paper names it (``attack.label``)."""
    res = _dry_run(name, "paper", str(tmp_path / "out"))
    rows: dict[str, list] = {}
    labels: dict[str, set[str]] = {}
    for argv in _commands(res.stdout, "reconattack.run"):
        for job, cfg in check_multirun(argv):
            row = Path(str(cfg.hydra.sweep.dir)).name
            what = {"model": OmegaConf.to_container(cfg.model, resolve=True),
                    "loss": OmegaConf.to_container(cfg.loss, resolve=True),
                    "stages": list(cfg.attack.stages), "compress": cfg.threat.compress}
            rows.setdefault(row, []).append((job, what))
            labels.setdefault(row, set()).add(cfg.attack.label)
    assert len(rows) >= 2
    for row, settings in rows.items():
        first_job, first = settings[0]
        for job, other in settings[1:]:
            assert other == first, (row, first_job, job)
    models = {json.dumps(s[0][1], sort_keys=True) for s in rows.values()}
    assert len(models) == len(rows)  # the rows differ from each other
    assert all(len(v) == 1 for v in labels.values()), labels  # one name per row
    assert len({next(iter(v)) for v in labels.values()}) == len(rows)
    assert {"w/o fine net", "w fine net"} <= {next(iter(v)) for v in labels.values()} or name != "cfgan_table4"


def test_the_demo_rows_are_named_for_what_the_demo_trains(tmp_path):
    """CFGAN Table VI at demo scale: the demo's loss has no perceptual or adversarial term, so its
    rows are not called L_pix+per+adv."""
    res = _dry_run("cfgan_table6", "demo", str(tmp_path / "out"))
    labels = {cfg.attack.label for argv in _commands(res.stdout, "reconattack.run") for _, cfg in check_multirun(argv)}
    assert labels == {"L_pix (c)", "w L_sift (c)", "L_pix (c&f)", "w L_sift (c&f)"}


def test_cfgan_ablations_without_the_sift_loss_where_the_paper_has_none(tmp_path):
    """Tables III-V study the architecture "in the absence of sift loss" (the paper's §IV-C;
    their reference rows equal Table VI's L_pix+per+adv (c&f) row)."""
    for name in ("cfgan_table3", "cfgan_table4", "cfgan_table5"):
        res = _dry_run(name, "paper", str(tmp_path / "out"))
        for argv in _commands(res.stdout, "reconattack.run"):
            for job, cfg in check_multirun(argv):
                assert cfg.loss.sift == 0.0, (name, job)


def test_avih_demo_ablation_changes_the_loss_as_the_paper_files_do(tmp_path):
    """avih_table4 at demo scale turns off what avih_attack_agedb30_{no_gan,no_aug,identity_only}
    turn off, on the demo experiment, and names its rows as those files do."""
    def loss_change(base, variant):
        a, b = (OmegaConf.to_container(c.loss, resolve=True) for c in (base, variant))
        change = {k: b.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k)}
        return json.dumps({"label": variant.attack.label, **change}, sort_keys=True)

    paper_base = compose_cfg(["+experiment=avih_attack_agedb30"])
    paper = {loss_change(paper_base, compose_cfg([f"+experiment={e}"]))
             for e in ("avih_attack_agedb30_no_gan", "avih_attack_agedb30_no_aug", "avih_attack_agedb30_identity_only")}
    demo_base = compose_cfg(["+experiment=demo_avih"])
    res = _dry_run("avih_table4", "demo", str(tmp_path / "out"))
    demo = set()
    for argv in _commands(res.stdout, "reconattack.run"):
        for _job, cfg in check_multirun(argv):
            change = loss_change(demo_base, cfg)
            if change != json.dumps({"label": "Ours"}):
                demo.add(change)
    assert demo == paper and len(paper) == 3
    assert {json.loads(c)["label"] for c in paper} == {
        "Ours w/o GAN loss", "Ours w/o augmentation", "Ours w/o GAN loss & augmentation"}


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_every_demo_job_runs_a_fast_dev_run(tmp_path):
    """Composing is not running: a setting the runner refuses (e.g. a fine net started from the
    coarse net with concatenated inputs) shows only in a run. Every distinct job of every demo
    recipe, shrunk (tests.helpers), runs one fast_dev_run step on CPU."""
    from reconattack.run import run

    seen = set()
    for path in RECIPE_FILES:
        res = _dry_run(path.stem, "demo", str(tmp_path / "out"))
        for argv in _commands(res.stdout, "reconattack.run"):
            for job, _ in check_multirun(argv):
                # the tiny settings replace the key share: one run per other setting
                job = [o for o in job if not o.startswith(("hydra.", "seed=", "threat.key_share="))]
                if tuple(job) in seen:
                    continue
                seen.add(tuple(job))
                tmp = tmp_path / str(len(seen))
                overrides = [*job, *base_overrides(tmp), *tiny_overrides(compose_cfg(job))]
                metrics = run(compose_cfg([*overrides, "+trainer.fast_dev_run=1"]))
                assert metrics, (path.stem, job)
    assert len(seen) >= 10


@pytest.mark.slow
def test_a_demo_recipe_runs_end_to_end_at_a_tiny_size(tmp_path):
    """avih_table1_2 at demo scale, shrunk by pass-through overrides (which replace the recipe's
    key shares and seeds): the multirun, then the report, whose path is printed. Slow (about
    140 s of the default suite's 11 minutes): in the default suite the recipe's steps are run with
    faked jobs (test_a_failed_multirun_still_gets_its_report_and_stops_the_recipe) and a real AVIH
    multirun with its report by tests/test_report.py::test_report_of_a_real_avih_multirun."""
    cfg = compose_cfg(["+experiment=demo_avih"])
    extra = [o for o in [*base_overrides(tmp_path), *tiny_overrides(cfg)]
             if not o.startswith(("paths.output_dir=", "paths.data_dir="))]
    extra += ["attack.steps.attack=2", "seed=0"]
    out = tmp_path / "out"
    res = _script(EXPERIMENTS_DIR / "avih_table1_2.py", "--scale", "demo", "--out", str(out), *extra, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (job,) = [p.parent for p in out.rglob("metrics.json")]
    assert "threat.key_share=0.5" in (job / ".hydra" / "overrides.yaml").read_text()
    reports = list(out.rglob("report.md"))
    assert len(reports) == 1 and "ours" in reports[0].read_text().lower()
    assert f"report: {reports[0]}" in res.stdout
    # again with --resume: the finished run is kept, not run again
    before = (job / "checkpoints" / "attack.ckpt").stat().st_mtime_ns
    res = _script(EXPERIMENTS_DIR / "avih_table1_2.py", "--scale", "demo", "--out", str(out), "--resume",
                  *extra, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (job / "checkpoints" / "attack.ckpt").stat().st_mtime_ns == before
    assert "nothing to do" in res.stdout + res.stderr


# ------------------------------------------------------------------ stopping and reporting
def _fake_recipe() -> recipes.Recipe:
    sweeps = tuple(recipes.Sweep(f"s{i}", ("+experiment=demo_avih",)) for i in range(3))
    scale = recipes.Scale(sweeps=sweeps, reports=("s0", "s1", "s2"), seeds="0,1", about="test")
    return recipes.Recipe(name="fake", table="none", description="test", scales={"demo": scale, "paper": scale})


def test_a_failed_multirun_still_gets_its_report_and_stops_the_recipe(tmp_path, capsys):
    """The second multirun has one failed job: the third is not run, the two that ran get their
    reports (the report lists the failed job), the recipe says what failed and returns 1."""
    calls = []

    def runner(argv, env=None):
        calls.append(list(argv))
        if "reconattack.run" in argv:
            sweep = Path(next(a for a in argv if a.startswith("hydra.sweep.dir=")).split("=", 1)[1])
            jobs = [{"dir": str(sweep / "0"), "overrides": ["seed=0"], "status": "finished", "error": None}]
            (sweep / "0").mkdir(parents=True)
            (sweep / "0" / "metrics.json").write_text("{}")
            rc = 0
            if sweep.name == "s1":
                jobs.append({"dir": str(sweep / "1"), "overrides": ["seed=1"], "status": "failed",
                             "error": "ValueError: boom"})
                rc = 1
            (sweep / "sweep_status.json").write_text(json.dumps(jobs))
            return subprocess.CompletedProcess(argv, rc)
        return subprocess.CompletedProcess(argv, 0)

    steps = recipes.plan(_fake_recipe(), "demo", tmp_path / "out")
    rc = recipes.execute(steps, runner=runner)
    assert rc == 1
    ran = [c for c in calls if "reconattack.run" in c]
    reported = [c[-1] for c in calls if "reconattack.report" in c]
    assert len(ran) == 2 and reported == [str(tmp_path / "out" / "s0"), str(tmp_path / "out" / "s1")]
    out = capsys.readouterr().out
    assert "stopped" in out and "s1" in out and "[seed=1] failed: ValueError: boom" in out
    assert "--resume" in out


def test_a_command_that_fails_before_any_job_stops_without_a_report(tmp_path, capsys):
    calls = []

    def runner(argv, env=None):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 2)  # e.g. a config error: nothing written

    rc = recipes.execute(recipes.plan(_fake_recipe(), "demo", tmp_path / "out"), runner=runner)
    assert rc == 1 and len(calls) == 1
    assert "exit status 2" in capsys.readouterr().out


def test_the_plan_and_pass_through_overrides(tmp_path):
    recipe = _fake_recipe()
    (first, *_), out = recipes.plan(recipe, "demo", tmp_path), str(tmp_path)
    assert first.argv[1:4] == ("-m", "reconattack.run", "-m") and "seed=0,1" in first.argv
    assert f"hydra.sweep.dir={out}/s0" in first.argv
    steps = recipes.plan(recipe, "demo", tmp_path, extra=["seed=3", "attack.steps.attack=2"],
                         launcher="slurm", resume=True)
    argv = steps[0].argv
    assert "seed=3" in argv and "seed=0,1" not in argv  # replaced, not added
    assert {"attack.steps.attack=2", "+launcher=slurm", "resume=true"} <= set(argv)
    assert [s.kind for s in steps] == ["sweep"] * 3 + ["report"] * 3
    spaced = recipes.plan(recipe, "demo", tmp_path / "a b")[0].argv
    assert f"hydra.sweep.dir='{tmp_path}/a b/s0'" in spaced


def test_a_checkpoint_of_an_earlier_multirun_is_the_same_seeds_run(tmp_path):
    train = recipes.Sweep("train", ("+experiment=cfgan_celebahq",), by_seed=True)
    evaluate = recipes.Sweep("eval", ("+experiment=cfgan_ffhq_eval", recipes.Checkpoint("fine", "train")))
    scale = recipes.Scale(sweeps=(train, evaluate), reports=("eval",), seeds="0,1", about="")
    recipe = recipes.Recipe("r", "t", "d", {"demo": scale, "paper": scale})
    steps = recipes.plan(recipe, "paper", tmp_path)
    assert "hydra.sweep.subdir=seed${seed}" in steps[0].argv
    assert f"attack.checkpoints.fine={tmp_path}/train/seed${{seed}}/checkpoints/fine.ckpt" in steps[1].argv
    with pytest.raises(ConfigError, match="loss.adv=0.01,0.02"):  # would share job directories
        recipes.plan(recipe, "paper", tmp_path, extra=["loss.adv=0.01,0.02"])
    bad = recipes.Scale(sweeps=(evaluate, train), reports=(), seeds="0", about="")
    with pytest.raises(ValueError, match="earlier"):
        recipes.plan(recipes.Recipe("r", "t", "d", {"demo": bad, "paper": bad}), "paper", tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--launcher", "nope"], "--launcher nope: no conf/launcher/nope.yaml"),
    (["hydra.sweep.dir=/x"], "hydra.sweep.dir is set by the recipe"),
    (["seed=[0"], "cannot parse the override 'seed=[0'"),
    (["--out", "/tmp/it's"], "--out"),
])
def test_user_mistakes_are_one_line_errors(args, message, tmp_path):
    res = _script(EXPERIMENTS_DIR / "avih_table4.py", "--scale", "demo", "--dry-run",
                  *(["--out", str(tmp_path / "o")] if "--out" not in args else []), *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_an_existing_output_directory_needs_resume(tmp_path):
    (tmp_path / "out" / "digits").mkdir(parents=True)
    (tmp_path / "out" / "digits" / "x").write_text("")
    res = _script(EXPERIMENTS_DIR / "avih_table1_2.py", "--scale", "demo", "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "--resume" in res.stderr and "Traceback" not in res.stderr
