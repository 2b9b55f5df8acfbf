import csv
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
import yaml

from reconattack.errors import ConfigError, InputNotFoundError
from reconattack.report import Options, build_report, main, tex_escape, write_reports
from reconattack.utils.grids import save_grid

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_run(root, name, overrides, metrics, config=None, failed=None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if config is not None:
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (d / "failed.txt").write_text(failed)
    return d


def _is_png(path: Path) -> bool:
    if not path.is_file() or path.read_bytes()[:8] != PNG_MAGIC:
        return False
    img = matplotlib.image.imread(path)
    return img.ndim == 3 and img.shape[0] > 10 and img.shape[1] > 10


def _row(md: str, label: str, after: str = "") -> list[str]:
    """The cells of the markdown row labelled ``label`` (the first after the text ``after``); the
    label may carry the collapse checks' mark (a tiny run's attack is flagged:
    tests/test_report_warnings.py)."""
    text = md[md.index(after):] if after else md
    for line in text.splitlines():
        if line.startswith((f"| {label} |", f"| {label} ⚠ |")):
            return [c.strip() for c in line.strip().strip("|").split("|")][1:]
    raise AssertionError(f"no row {label!r} in\n{text}")


def _text(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def test_report_mean_std_over_seeds_and_plot_over_a_swept_value(tmp_path):
    for i, (share, seed, psnr) in enumerate([(0.1, 0, 10.0), (0.1, 1, 12.0), (0.7, 0, 20.0), (0.7, 1, 22.0)]):
        _fake_run(tmp_path, str(i), [f"attack.key_share={share}", f"seed={seed}"],
                  {"test/psnr": psnr, "test/fid": "missing: no weights"})
    written = write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "11.0000 ± 1.4142" in md and "21.0000 ± 1.4142" in md  # stdev with ddof=1
    assert "| missing |" in md and "- no weights" in md  # the reason once, below the table
    csv_text = (tmp_path / "report.csv").read_text()
    assert "test/psnr mean" in csv_text
    assert (tmp_path / "report_test_psnr.png") in written


def _config(attack_label):
    return {"threat": {"report": {
        "attack_row": "test",
        "controls": {"mean_image": {"row": "baseline/mean_image", "label": "mean image", "per_attack": False},
                     "shuffled_input": {"row": "baseline/shuffled", "label": "shuffled", "per_attack": True}},
        "columns": {"ssim": "higher", "psnr": "higher", "lpips": "lower"}}},
        "attack": {"name": attack_label.lower(), "label": attack_label}}


def test_paper_layout_comes_from_the_run_configs(tmp_path):
    """Rows per attack (its label), controls once unless they depend on the attack, columns with
    ↑ / ↓ in the order the threat's config gives."""
    runs = [("CFGAN", 0, 16.0, 15.0), ("CFGAN", 1, 18.0, 15.0), ("IVR", 0, 14.0, 15.0), ("IVR", 1, 14.5, 15.0)]
    for i, (label, seed, psnr, mean_psnr) in enumerate(runs):
        _fake_run(tmp_path, str(i), [f"attack={label.lower()}_demo", f"seed={seed}"],
                  {"test/psnr": psnr, "test/ssim": 0.5, "test/lpips": "missing: no AlexNet",
                   "baseline/mean_image/psnr": mean_psnr, "baseline/mean_image/ssim": 0.4,
                   "baseline/shuffled/psnr": psnr - 2, "baseline/shuffled/ssim": 0.3},
                  config=_config(label))
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    layout = md[md.index("## Paper layout"):]
    assert "| row | ssim ↑ | psnr ↑ | lpips ↓ |" in layout
    assert "| CFGAN | 0.5000 ± 0.0000 | 17.0000 ± 1.4142 | missing |" in layout
    assert "| IVR | 0.5000 ± 0.0000 | 14.2500 ± 0.3536 | missing |" in layout
    assert layout.count("| mean image |") == 1  # the same for both attacks: once
    assert "| shuffled (CFGAN) |" in layout and "| shuffled (IVR) |" in layout


# ------------------------------------------------------------------ a synthetic key-share sweep
SHARES = (0.1, 0.5, 1.0)
SEEDS = (0, 1, 2)
# Ours' TPR@FAR per dataset, key share and seed; Random's is 0.05 everywhere, so the per-seed
# differences average 0.07 / 0.25 / 0.60 on lfw and -0.02 / 0.02 / 0.06 on agedb30
OURS_TPR = {"lfw": {0.1: [0.10, 0.14, 0.12], 0.5: [0.30, 0.40, 0.20], 1.0: [0.60, 0.70, 0.65]},
            "agedb30": {0.1: [0.02, 0.03, 0.04], 0.5: [0.06, 0.08, 0.07], 1.0: [0.10, 0.12, 0.11]}}
RANDOM_TPR = 0.05
CONTROLS = {"original": ("Original", 0.98), "protected": ("Protected", 0.2),
            "key_model": ("Key model", 0.95), "random": ("Random", RANDOM_TPR)}
GRID_COLUMNS = ["target", "ours", "original", "protected", "key_model", "random"]


def _layout(paper: Path | None) -> dict:
    return {"attack_row": "ours",
            "controls": {name: {"row": name, "label": label, "per_attack": False}
                         for name, (label, _) in CONTROLS.items()},
            "columns": {"tpr@far": "higher", "mse": "lower", "psnr": "higher"},
            "tables_by": ["data.name"], "blocks_by": [],
            "sweep": {"key": "threat.key_share", "label": "key share"},
            "threshold": {"title": "How many images may share a key", "metric": "tpr@far",
                          "baseline": "random", "margin": 0.1, "count": "attack/leaked_images",
                          "count_label": "images under the key"},
            "paper": str(paper) if paper else None}


def _paper_file(tmp: Path) -> Path:
    path = tmp / "paper.yaml"
    path.write_text(yaml.safe_dump({
        "source": "The test paper",
        "entries": [
            {"table": "Table I", "row": "ours", "match": {"data.name": "lfw", "threat.key_share": 0.5},
             "values": {"tpr@far": "0.612 ± 0.136", "psnr": "9.120 ± 1.781"}},
            {"table": "Table I", "row": "random", "match": {"data.name": "lfw"}, "values": {"tpr@far": "0.036"}},
            # our runs have no loss.gan: never matched
            {"table": "Table IV", "row": "ours", "match": {"data.name": "agedb30", "loss.gan": 1.0},
             "values": {"tpr@far": "0.999"}}]}, allow_unicode=True))
    return path


def _tiles(dataset: str, share: float, seed: int) -> list[torch.Tensor]:
    """Grid columns of one run: the targets depend on the dataset only, Ours on everything."""
    g = torch.Generator().manual_seed(len(dataset))
    target = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    ours = torch.full((3, 3, 8, 8), share - 0.5 + seed / 10)
    return [target, ours, target, -target, target * 0.5, torch.zeros(3, 3, 8, 8)]


def _sweep(tmp: Path, paper: Path | None = None, grids: bool = True) -> dict:
    """Finished jobs (2 datasets x 3 key shares x 3 seeds), one failed and one unfinished job.
    Returns {(dataset, share): [metrics of each seed]}."""
    rng = torch.Generator().manual_seed(0)
    runs: dict = {}
    i = 0
    for dataset, shares in OURS_TPR.items():
        for share in SHARES:
            for seed in SEEDS:
                m = {"ours/tpr@far": shares[share][seed],
                     "ours/mse": round(float(torch.rand(1, generator=rng)), 6),
                     "ours/psnr": round(10 + 5 * float(torch.rand(1, generator=rng)), 6),
                     "attack/leaked_images": round(share * 12)}
                if dataset == "agedb30" and share == 0.5 and seed == 2:
                    m["ours/psnr"] = "missing: no weights here"
                for row, (_, tpr) in CONTROLS.items():
                    m.update({f"{row}/tpr@far": tpr, f"{row}/mse": 0.5, f"{row}/psnr": 9.0})
                config = {"threat": {"label": "Encrypted gallery", "key_share": share, "report": _layout(paper)},
                          "data": {"name": dataset}, "attack": {"name": "x", "label": "Ours"}}
                d = _fake_run(tmp, str(i), [f"data=test_{dataset}", f"threat.key_share={share}", f"seed={seed}",
                                            "trainer=cpu"], m, config)
                if grids:
                    save_grid(_tiles(dataset, share, seed), d / "samples" / "test_grid.png")
                    (d / "samples" / "test_grid.txt").write_text(" | ".join(GRID_COLUMNS) + "\n")
                runs.setdefault((dataset, share), []).append(m)
                i += 1
    config = {"threat": {"label": "Encrypted gallery", "key_share": 1.5, "report": _layout(paper)},
              "data": {"name": "lfw"}, "attack": {"name": "x", "label": "Ours"}}
    _fake_run(tmp, str(i), ["data=test_lfw", "threat.key_share=1.5", "seed=0", "trainer=cpu"], None, config,
              failed="ConfigError: threat.key_share must be in (0, 1], got 1.5\n\nTraceback (most recent call last):\n")
    _fake_run(tmp, str(i + 1), ["data=test_lfw", "threat.key_share=0.5", "seed=3", "trainer=cpu"], None, config)
    return runs


def test_mean_std_and_n_over_seeds_match_the_statistics_module(tmp_path):
    runs = _sweep(tmp_path, grids=False)
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    layout = md.index("## Paper layout")
    with open(tmp_path / "report.csv", newline="") as f:
        table = {row["setting"]: row for row in csv.DictReader(f)}
    for (dataset, share), ms in runs.items():
        setting = f"data=test_{dataset}, threat.key_share={share}"
        for key in ("ours/tpr@far", "ours/psnr", "ours/mse"):
            values = [m[key] for m in ms if isinstance(m[key], float)]
            row = table[setting]
            assert float(row[f"{key} mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert float(row[f"{key} std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert int(row[f"{key} n"]) == len(values)
        assert int(table[setting]["runs"]) == 3
        cells = _row(md[layout:], f"Ours (threat.key_share={share})",
                     f"### Encrypted gallery: data.name={dataset}")
        tpr = [m["ours/tpr@far"] for m in ms]
        assert cells[0] == _text(tpr)
        psnr = [m["ours/psnr"] for m in ms if isinstance(m["ours/psnr"], float)]
        assert cells[2] == _text(psnr) + ("" if len(psnr) == 3 else f" (n={len(psnr)})")
    # the controls are the same in every group of a table: one row each, after the attack's rows
    lfw = md[md.index("### Encrypted gallery: data.name=lfw"):]
    lfw = lfw[:lfw.index("\n\n", lfw.index("| row |"))]
    assert [line.split("|")[1].strip() for line in lfw.splitlines()[4:]] == [
        "Ours (threat.key_share=0.1)", "Ours (threat.key_share=0.5)", "Ours (threat.key_share=1.0)",
        "Original", "Protected", "Key model", "Random"]
    assert _row(lfw, "Random")[0] == f"{RANDOM_TPR:.4f} ± 0.0000"


def test_jobs_that_failed_or_have_no_metrics_are_listed(tmp_path):
    _sweep(tmp_path, grids=False)
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    section = md[md.index("## Jobs without results"):]
    failed = _row(section, "18")
    assert failed[0] == "failed" and "threat.key_share=1.5" in failed[1]
    assert failed[2] == "ConfigError: threat.key_share must be in (0, 1], got 1.5"
    unfinished = _row(section, "19")
    assert unfinished[0] == "unfinished" and "seed=3" in unfinished[1] and "no metrics.json" in unfinished[2]
    assert "trainer=cpu" not in section  # common to every job: listed once at the top
    assert "`trainer=cpu`" in md[:md.index("## All metrics")]
    # the setting with no finished run is kept in the table, with its failed count
    main_table = md[md.index("## All metrics"):md.index("## Paper layout")]
    assert _row(main_table, "data=test_lfw, threat.key_share=1.5")[:2] == ["0", "1"]
    assert _row(main_table, "data=test_lfw, threat.key_share=0.5")[:2] == ["3", "1"]
    assert "1 failed, 1 unfinished" in md


def test_key_share_answer_and_margin_option(tmp_path):
    _sweep(tmp_path, grids=False)
    report = build_report(tmp_path)
    answers = {a.table: a for a in report.answers}
    assert answers["data.name=lfw"].value == 0.5  # differences 0.07, 0.25, 0.60 > 0.1
    assert answers["data.name=agedb30"].value is None  # -0.02, 0.02, 0.06
    diffs = dict((x, s.mean) for x, s in answers["data.name=lfw"].points)
    for share in SHARES:
        expected = statistics.fmean(t - RANDOM_TPR for t in OURS_TPR["lfw"][share])
        assert diffs[share] == pytest.approx(expected, abs=1e-12)
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    section = md[md.index("## How many images may share a key"):]
    assert "by more than 0.1" in section  # the margin is stated
    lfw = _row(section, "data.name=lfw")
    assert lfw[1] == "0.5" and lfw[2] == "6"  # round(0.5 x 12) images under the key
    assert _row(section, "data.name=agedb30")[1] == "none up to 1.0"
    # --margin overrides the config's margin
    main([str(tmp_path), "--margin", "0.05", "--digits", "3"])
    md = (tmp_path / "report.md").read_text()
    section = md[md.index("## How many images may share a key"):]
    assert "by more than 0.05" in section
    assert _row(section, "data.name=lfw")[1] == "0.1" and _row(section, "data.name=agedb30")[1] == "1.0"
    assert f"{statistics.fmean(OURS_TPR['lfw'][0.5]):.3f} ± {statistics.stdev(OURS_TPR['lfw'][0.5]):.3f}" in md


def test_paper_numbers_beside_the_matching_rows(tmp_path):
    _sweep(tmp_path, paper=_paper_file(tmp_path), grids=False)
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    lfw = md[md.index("### Encrypted gallery: data.name=lfw"):]
    lfw = lfw[:lfw.index("###", 3)]
    lines = [line for line in lfw.splitlines() if line.startswith("| ")]
    labels = [line.split("|")[1].strip() for line in lines]
    i = labels.index("Ours (threat.key_share=0.5)")
    assert labels[i + 1] == "† paper: Table I"  # right below the setting it matches
    assert _row(lfw, "† paper: Table I") == ["0.612 ± 0.136", "", "9.120 ± 1.781"]
    j = labels.index("Random")
    assert labels[j + 1] == "† paper: Table I" and lines[j + 1].split("|")[2].strip() == "0.036"
    assert "The test paper" in lfw  # named under the table
    assert "0.999" not in md  # its setting (loss.gan=1.0) matches none of ours
    agedb = md[md.index("### Encrypted gallery: data.name=agedb30"):]
    assert "† paper" not in agedb[:agedb.index("## ", 4)]
    with open(tmp_path / "report_layout.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paper = [r for r in rows if r["source"].startswith("paper") and r["column"] == "tpr@far"
             and r["row"] == "Ours (threat.key_share=0.5)"]
    assert len(paper) == 1 and float(paper[0]["mean"]) == 0.612 and float(paper[0]["std"]) == 0.136
    assert paper[0]["source"] == "paper: The test paper, Table I"


def test_tex_tables_are_booktabs_and_escaped(tmp_path):
    assert tex_escape("a_b & 50% $x$ #1 {y} ~ ^ \\") == (
        r"a\_b \& 50\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}")
    runs = _sweep(tmp_path, paper=_paper_file(tmp_path), grids=False)
    write_reports(tmp_path)
    tex = (tmp_path / "report.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 2 and tex.count(r"\toprule") == 2 and tex.count(r"\bottomrule") == 2
    assert r"\usepackage{booktabs}" in tex
    assert r"Ours (threat.key\_share=0.5)" in tex and "threat.key_share" not in tex
    assert r"tpr@far $\uparrow$ & mse $\downarrow$ & psnr $\uparrow$ \\" in tex
    tpr = [m["ours/tpr@far"] for m in runs[("lfw", 0.5)]]
    assert f"${statistics.fmean(tpr):.4f} \\pm {statistics.stdev(tpr):.4f}$" in tex
    assert r"\textit{$^\dagger$ paper: Table I} & $0.612 \pm 0.136$" in tex
    body = tex[tex.index(r"\begin{tabular}"):tex.index(r"\end{tabular}")]
    assert "±" not in body and "↑" not in body and "†" not in body  # no unicode inside the tabular
    assert not re.search(r"(?<![\\])[_%#]", re.sub(r"\$[^$]*\$", "", body))  # outside math: escaped


def test_a_label_with_tex_characters_is_escaped(tmp_path):
    cfg = _config("Ours_v2 & 100%")
    for seed in (0, 1):
        _fake_run(tmp_path, str(seed), [f"seed={seed}"], {"test/psnr": 10.0 + seed, "test/ssim": 0.5}, cfg)
    _fake_run(tmp_path, "2", ["attack=ivr", "seed=0"], {"test/psnr": 9.0, "test/ssim": 0.4, "test/lpips": 0.3},
              _config("IVR"))
    write_reports(tmp_path)
    tex = (tmp_path / "report.tex").read_text()
    assert r"Ours\_v2 \& 100\% & $0.5000 \pm 0.0000$ & $10.5000 \pm 0.7071$ & -- \\" in tex  # no lpips: --
    assert r"IVR & $0.4000$ & $9.0000$ & $0.3000$ \\" in tex


def test_plots_one_line_per_dataset_and_a_sample_grid(tmp_path):
    runs = _sweep(tmp_path)
    written = write_reports(tmp_path)
    report = build_report(tmp_path)
    for col in ("tpr_at_far", "mse", "psnr"):
        path = tmp_path / f"report_ours_{col}.png"
        assert path in written and _is_png(path)
    series = {s.label: s for s in report.series["ours/tpr@far"]}
    assert {"Ours (lfw)", "Ours (agedb30)"} <= set(series)  # one line per dataset
    lfw = series["Ours (lfw)"]
    assert [p[0] for p in lfw.points] == list(SHARES)
    for x, mean, std, n in lfw.points:
        assert mean == pytest.approx(statistics.fmean(OURS_TPR["lfw"][x]))
        assert std == pytest.approx(statistics.stdev(OURS_TPR["lfw"][x])) and n == 3
    assert "Random (lfw)" in series and not series["Random (lfw)"].attack  # a control: dashed
    # the sample grid: targets, the controls that differ from them, Ours at each key share
    grid = tmp_path / "report_grid_lfw.png"
    assert grid in written and _is_png(grid)
    titles = (tmp_path / "report_grid_lfw.txt").read_text().strip().split(" | ")
    assert titles == ["target", "Protected", "Key model", "Random", "Ours (key share=0.1)",
                      "Ours (key share=0.5)", "Ours (key share=1.0)"]
    img = matplotlib.image.imread(grid)
    assert img.shape[:2] == (2 + 3 * 10, 2 + 7 * 10)  # 3 images of 8 px, 2 px padding
    seed0 = _tiles("lfw", 0.5, 0)[1][1]  # the first seed's Ours at 0.5, second image
    tile = img[2 + 10:2 + 10 + 8, 2 + 5 * 10:2 + 5 * 10 + 8, :3]
    assert abs(float(tile.mean()) - float((seed0 + 1).mean() / 2)) < 0.01
    figure = tmp_path / "report_grid_lfw_figure.png"  # titled, each tile about an inch
    assert figure in written and _is_png(figure)
    assert matplotlib.image.imread(figure).shape[1] > 7 * 100
    md = (tmp_path / "report.md").read_text()
    assert "(report_grid_lfw_figure.png)" in md and "`report_grid_lfw.png`" in md
    assert "report_ours_tpr_at_far.png" in md
    assert runs  # the runs exist


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        write_reports(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no run below"):
        write_reports(tmp_path / "empty")
    with pytest.raises(ConfigError, match="--grid-rows"):
        Options(grid_rows=0).check()
    _sweep(tmp_path / "s", paper=tmp_path / "absent.yaml", grids=False)
    with pytest.raises(InputNotFoundError, match="absent.yaml"):
        write_reports(tmp_path / "s")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nothing")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().startswith("InputNotFoundError: ")


def test_block_layout_method_by_dataset(tmp_path):
    """CFGAN Table I: one row per method, a block of columns per dataset; a column one block
    reports stays in every block, a column no run reports (fid_cfgan without
    metrics=cfgan_paper) is left out and named."""
    i = 0
    for dataset in ("celebahq", "lsun_bird"):
        for label in ("CFGAN", "IVR"):
            for seed in (0, 1):
                cfg = _config(label)
                cfg["threat"]["report"]["blocks_by"] = ["data.name"]
                cfg["threat"]["report"]["columns"]["fid_cfgan"] = "lower"
                cfg["data"] = {"name": dataset}
                metrics = {"test/psnr": 10.0 + i, "test/ssim": 0.5, "baseline/mean_image/ssim": 0.4,
                           "baseline/shuffled/ssim": 0.1 * i}
                if dataset == "lsun_bird":
                    metrics["test/lpips"] = 0.25
                _fake_run(tmp_path, str(i), [f"+experiment={label.lower()}_{dataset}", f"seed={seed}"], metrics, cfg)
                i += 1
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    layout = md[md.index("## Paper layout"):]
    assert ("| row | celebahq: ssim ↑ | celebahq: psnr ↑ | celebahq: lpips ↓ | lsun_bird: ssim ↑ | "
            "lsun_bird: psnr ↑ | lsun_bird: lpips ↓ |") in layout
    assert _row(layout, "CFGAN") == ["0.5000 ± 0.0000", "10.5000 ± 0.7071", "", "0.5000 ± 0.0000",
                                     "14.5000 ± 0.7071", "0.2500 ± 0.0000"]
    assert layout.count("| mean image |") == 1
    assert "fid_cfgan ↓" not in layout
    assert "Left out, no run of this table reported them: `fid_cfgan`." in layout
    tex = (tmp_path / "report.tex").read_text()
    assert r"\multicolumn{3}{c}{celebahq} & \multicolumn{3}{c}{lsun\_bird}" in tex
    assert r"\cmidrule(lr){2-4}\cmidrule(lr){5-7}" in tex and "fid" not in tex
    with open(tmp_path / "report_layout.csv", newline="") as f:
        columns = {r["column"] for r in csv.DictReader(f)}
    assert columns == {"ssim", "psnr", "lpips"}


def test_rows_come_in_the_order_their_multiruns_ran(tmp_path):
    """A recipe runs a table's rows as sweeps in the paper's order (w/o fine net, then w fine
    net); the report keeps that order, not the directories' alphabetical one."""
    import os

    for i, (name, label) in enumerate([("coarse_only", "w/o fine net"), ("coarse_fine", "w fine net")]):
        sweep = tmp_path / "faces" / name
        cfg = _config("CFGAN")
        cfg["attack"]["label"] = label
        _fake_run(sweep, "0", [f'attack.label="{label}"', "seed=0"], {"test/psnr": 10.0 + i}, cfg)
        (sweep / "multirun.yaml").write_text("{}\n")
        os.utime(sweep / "multirun.yaml", ns=(10**18 + i, 10**18 + i))  # coarse_only launched first
    write_reports(tmp_path / "faces")
    md = (tmp_path / "faces" / "report.md").read_text()
    layout = md[md.index("## Paper layout"):]
    assert layout.index("| w/o fine net |") < layout.index("| w fine net |")


def test_a_row_without_the_override_shows_its_configs_value(tmp_path):
    """Rows told apart by an override one of them lacks: that row shows what its config holds
    there, not a bare 'default'."""
    for i, (over, stages, compress) in enumerate([(["attack.stages=[coarse]"], ["coarse"], True),
                                                  ([], ["coarse", "fine"], True),
                                                  (["threat.compress=false"], ["coarse", "fine"], False)]):
        cfg = _config("CFGAN")
        cfg["attack"]["stages"], cfg["threat"]["compress"] = stages, compress
        _fake_run(tmp_path, str(i), [*over, "seed=0"], {"test/psnr": 10.0 + i, "test/ssim": 0.5}, cfg)
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    layout = md[md.index("## Paper layout"):]
    assert _row(layout, "CFGAN (attack.stages=[coarse], threat.compress=true)")[1] == "10.0000"
    assert _row(layout, "CFGAN (attack.stages=[coarse,fine], threat.compress=true)")[1] == "11.0000"
    assert _row(layout, "CFGAN (attack.stages=[coarse,fine], threat.compress=false)")[1] == "12.0000"
    assert "default" not in layout


@pytest.mark.parametrize("name", ["avih_attack_lfw", "avih_attack_market1501", "cfgan_celebahq"])
def test_the_paper_files_named_by_the_threats_load(name):
    """Every entry of the paper numbers the threat configs name has a table, a row of the layout,
    a match and values in the layout's columns, written as the paper prints them."""
    from reconattack.report import load_paper
    from tests.helpers import compose_cfg

    layout = compose_cfg([f"+experiment={name}"]).threat.report
    paper = load_paper(layout.paper)
    rows = {layout.attack_row} | {c.row for c in [*layout.controls.values(), *(layout.get("checks") or {}).values()]}
    assert paper["source"] and paper["entries"]
    for e in paper["entries"]:
        assert e["row"] in rows and e["match"] and e["table"], e
        assert set(e["values"]) <= set(layout.columns), e
        for v in e["values"].values():
            assert re.fullmatch(r"\d+(\.\d+)?( ± \d+(\.\d+)?)?", v), e


@pytest.mark.parametrize("overrides,row,expected", [
    (["+experiment=avih_attack_lfw", "threat.key_share=0.03"], "ours", {"Tables I-II": "0.825 ± 0.039"}),
    (["+experiment=avih_attack_agedb30", "threat.key_share=0.01"], "ours",
     {"Tables I-II": "0.628 ± 0.058", "Table IV": "0.628 ± 0.058"}),
    (["+experiment=avih_attack_agedb30_no_gan", "threat.key_share=0.7"], "ours", {"Table IV": "0.891 ± 0.021"}),
    (["+experiment=avih_attack_agedb30_identity_only", "threat.key_share=0.1"], "ours",
     {"Table IV": "0.370 ± 0.084"}),
    (["+experiment=avih_encrypt_cfpfp"], "original", {"Tables I-II": "0.971 ± 0.000"}),
    (["+experiment=avih_attack_lfw", "attack.steps.attack=2"], "ours", {}),  # not the paper's setting
    # the paper's "IR-18" service model may be ArcFace or AdaFace: its numbers beside either
    (["+experiment=avih_attack_lfw", "face@threat.service=adaface_ir18", "threat.key_share=0.03"], "ours",
     {"Tables I-II": "0.825 ± 0.039"}),
    (["+experiment=avih_attack_lfw", "face@threat.service=arcface_ir50", "threat.key_share=0.03"], "ours", {}),
    (["+experiment=avih_encrypt_lfw"], "service/protected", {"§ IV-A": "0.984"}),
    (["+experiment=avih_encrypt_agedb30"], "service/protected", {}),  # given for LFW only
    (["+experiment=avih_attack_lfw", "threat.key_share=0.05"], "ours", {}),
    (["+experiment=demo_avih"], "original", {}),
    (["+experiment=cfgan_celebahq"], "test", {"Table I": "0.7474", "Table VI": "0.7474"}),
    (["+experiment=cfgan_ffhq_eval"], "test", {"Table I": "0.6888", "Table VI": "0.6890"}),
    (["+experiment=cfgan_celebahq_no_sift"], "test",
     {"Table III": "0.7402", "Table IV": "0.7402", "Table V": "0.7402", "Table VI": "0.7402"}),
    (["+experiment=cfgan_celebahq_coarse_only"], "test", {"Table VI": "0.7462"}),
    (["+experiment=cfgan_celebahq_no_compression"], "test", {}),  # the paper's was without sift loss
    (["+experiment=ivr_lsun_bird"], "test", {"Table I": "0.3867"}),
    (["+experiment=inv_celebahq"], "test", {"Table I": "0.6497"}),
    (["+experiment=sli_celebahq"], "test", {"Table I": "0.6869"}),
    (["+experiment=sli_lsun_dining_room"], "test", {"Table I": "0.5885"}),
    (["+experiment=sli_celebahq", "threat.placement=first"], "test", {}),  # not SLI's map
    (["+experiment=glead_lsun_bird"], "test", {"Table I": "0.5214"}),
    (["+experiment=evdvae_ffhq_eval"], "test", {"Table I": "0.6531"}),
    ([], "test", {}),  # the CPU demo
    # re-identification (Tables V-VI): Rank-1 first; VeRi with the vehicles' VC kernel 8
    (["+experiment=avih_attack_market1501", "threat.key_share=0.03"], "ours", {"Tables V-VI": "0.147 ± 0.033"}),
    (["+experiment=avih_attack_veri", "threat.key_share=0.7"], "ours", {"Tables V-VI": "0.520 ± 0.064"}),
    (["+experiment=avih_encrypt_veri"], "key_model", {"Tables V-VI": "0.707 ± 0.000"}),
    (["+experiment=avih_attack_market1501"], "protected", {"Tables V-VI": "0.002 ± 0.000"}),
    (["+experiment=avih_attack_veri", "threat.encrypt.loss.vc_kernel=4"], "original", {}),
    (["+experiment=avih_attack_market1501", "attack.steps.attack=1600", "threat.key_share=0.03"], "ours", {}),
    (["+experiment=demo_reid"], "original", {}),
])
def test_the_paper_numbers_match_the_shipped_experiments(overrides, row, expected):
    """Each experiment file gets the paper's numbers of its own setting, and only those (the
    config as a run saves it in .hydra/config.yaml, unresolved)."""
    from omegaconf import OmegaConf

    from reconattack.report import load_paper, matches
    from tests.helpers import compose_cfg

    cfg = compose_cfg(overrides)
    config = OmegaConf.to_container(cfg, resolve=False)
    paper = load_paper(cfg.threat.report.paper) or {"entries": []}  # a demo names none
    found = {e["table"]: e["values"][next(iter(e["values"]))] for e in paper["entries"]
             if e["row"] == row and matches(config, e["match"])}
    assert found == expected


# ------------------------------------------------------------------------------ integration
def test_report_of_a_real_avih_multirun(tmp_path):
    """The AVIH demo at tiny size swept over two key shares x two seeds, with a third key share
    that is refused (1.5): the report's numbers are the jobs' metrics.json averaged, the failed jobs
    are listed, the plots, the grid and the .tex are there."""
    from tests.threats.test_avih_run import _cli, demo_tiny

    over = [o for o in demo_tiny(tmp_path) if not o.startswith(("paths.output_dir", "threat.key_share"))]
    sweep = tmp_path / "sweep"
    res = _cli("-m", *over, "threat.key_share=0.5,1.0,1.5", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1, res.stderr[-3000:]  # the 1.5 jobs failed, the others finished
    rep = subprocess.run([sys.executable, "-m", "reconattack.report", str(sweep), "--margin", "0.05"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    md = (sweep / "report.md").read_text()
    assert md in rep.stdout
    print(md)
    jobs: dict = {}
    for d in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        over = dict(o.split("=", 1) for o in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()))
        m = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else None
        jobs.setdefault(over["threat.key_share"], []).append((d.name, m))
    assert [m is None for _, m in jobs["1.5"]] == [True, True]
    table = md[md.index("### "):]
    diffs = {}
    for share in ("0.5", "1.0"):
        ms = [m for _, m in jobs[share]]
        cells = _row(table, f"Ours (threat.key_share={share})")
        for i, col in enumerate(("tpr@far", "tpr@far=0.001", "retrieval/clip/rank1", "retrieval/hog/rank1",
                                 "mse", "lpips", "psnr", "clip", "ssim")):
            values = [m[f"ours/{col}"] for m in ms]
            if isinstance(values[0], str):
                assert cells[i] == "missing"
            else:
                assert cells[i] == _text(values), (share, col)
        diffs[float(share)] = statistics.fmean(m["ours/tpr@far"] - m["random/tpr@far"] for m in ms)
    expected = next((x for x in sorted(diffs) if diffs[x] > 0.05), None)
    section = md[md.index("## How many images may share a key"):]
    assert "by more than 0.05" in section
    answer = _row(section, "data.name=digits")[1]
    assert answer == (str(expected) if expected is not None else "none up to 1.0"), (answer, diffs)
    # the table and the answer say what their numbers depend on; the service model's rows follow
    settings = ("Settings: TPR@FAR protocol: per_row; FAR: 0.01; SSIM window: gaussian; "
                "images scored as saved as: png.")
    assert settings in table.split("## How many")[0] and settings in section
    ms = [m for _, m in jobs["0.5"]]
    assert _row(table, "Service model: encrypted gallery")[0] == _text([m["service/protected/tpr@far"] for m in ms])
    # the failed jobs: their directories, overrides and error line
    failed = md[md.index("## Jobs without results"):]
    for name, _ in jobs["1.5"]:
        cells = _row(failed, name)
        assert cells[0] == "failed" and "threat.key_share=1.5" in cells[1]
        assert cells[2] == "ConfigError: threat.key_share must be in (0, 1], got 1.5"
    for name in ("report_ours_tpr_at_far.png", "report_ours_psnr.png", "report_grid_digits.png"):
        assert _is_png(sweep / name), name
    titles = (sweep / "report_grid_digits.txt").read_text().strip().split(" | ")
    assert titles[0] == "target" and titles[-2:] == ["Ours (key share=0.5)", "Ours (key share=1.0)"]
    tex = (sweep / "report.tex").read_text()
    assert r"Ours (threat.key\_share=0.5)" in tex and r"\bottomrule" in tex
    tpr = [m["ours/tpr@far"] for _, m in jobs["0.5"]]
    assert f"${statistics.fmean(tpr):.4f} \\pm {statistics.stdev(tpr):.4f}$" in tex


def test_sample_grids_of_non_square_tiles_are_cut_back_out(tmp_path):
    """A run's samples/test_grid.png of (H, W) tiles (re-identification: 32x16) is read back tile by
    tile with the size its .txt gives; a grid written before the size line had square tiles."""
    import torch

    from reconattack.report.figures import read_grid
    from reconattack.utils.grids import save_grid

    cols = [torch.rand(3, 3, 12, 6) * 2 - 1 for _ in range(2)]
    samples = tmp_path / "samples"
    save_grid(cols, samples / "test_grid.png")
    (samples / "test_grid.txt").write_text("target | ours\ntile: 12x6\n")
    tiles, size = read_grid(tmp_path)
    assert size == (12, 6) and tiles["ours"].shape == (3, 12, 6, 3)
    want = ((cols[1][2].permute(1, 2, 0) + 1) / 2 * 255).round().numpy()
    assert abs(tiles["ours"][2].astype(float) - want).max() <= 1
    square = [torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)]
    save_grid(square, samples / "test_grid.png")
    (samples / "test_grid.txt").write_text("target | ours\n")
    tiles, size = read_grid(tmp_path)
    assert size == (8, 8) and tiles["ours"].min() == 255 and tiles["target"].max() == 128


def _defence_config(**defence):
    cfg = _config("CFGAN")
    cfg["defence"] = {"name": "sift", "keep": 1.0, "coordinates": "exact", "labels": {"keep": "fraction of keypoints shared"},
                      "order": {"coordinates": ["exact", "withheld"]}, **defence}
    return cfg


def test_a_defence_multirun_is_the_reports_sweep(tmp_path):
    """A multirun over one defence setting: a row per strength, each metric against it in a plot
    with the controls, the axis named by the defence's label."""
    values = {1.0: 0.60, 0.5: 0.52, 0.25: 0.44}
    for i, (keep, ssim) in enumerate(values.items()):
        _fake_run(tmp_path, str(i), [f"defence.keep={keep}"],
                  {"test/ssim": ssim, "baseline/mean_image/ssim": 0.46, "baseline/shuffled/ssim": 0.30 + i / 100},
                  config=_defence_config(keep=keep))
    report = build_report(tmp_path)
    assert report.layout.sweep == {"key": "defence.keep", "label": "fraction of keypoints shared (defence.keep)"}
    lines = report.series["test/ssim"]
    ours = next(s for s in lines if s.attack)
    assert [(x, y) for x, y, *_ in ours.points] == [(0.25, 0.44), (0.5, 0.52), (1.0, 0.60)]
    assert {s.label for s in lines if not s.attack} == {"mean image", "shuffled"}  # the controls, same plot
    written = write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    for keep, ssim in values.items():
        assert _row(md, f"CFGAN (defence.keep={keep})", "## Paper layout")[0] == f"{ssim:.4f}"
    assert tmp_path / "report_test_ssim.png" in written and _is_png(tmp_path / "report_test_ssim.png")


def test_a_categorical_defence_setting_plots_in_its_order(tmp_path):
    """``coordinates: exact | withheld`` (not numbers): the points in the defence's ``order``, the
    ticks named by the values; a second varied setting is no sweep."""
    for i, (coords, ssim) in enumerate([("withheld", 0.35), ("exact", 0.6)]):
        _fake_run(tmp_path / "a", str(i), [f"defence.coordinates={coords}"], {"test/ssim": ssim},
                  config=_defence_config(coordinates=coords))
    report = build_report(tmp_path / "a")
    assert report.layout.sweep["key"] == "defence.coordinates"
    assert report.x_labels == {0.0: "exact", 1.0: "withheld"}
    assert [p[:2] for p in report.series["test/ssim"][0].points] == [(0.0, 0.6), (1.0, 0.35)]
    for i, (coords, keep) in enumerate([("withheld", 0.5), ("exact", 1.0)]):
        _fake_run(tmp_path / "b", str(i), [f"defence.coordinates={coords}", f"defence.keep={keep}"],
                  {"test/ssim": 0.5}, config=_defence_config(coordinates=coords, keep=keep))
    assert build_report(tmp_path / "b").layout.sweep is None


def test_the_report_opens_with_what_leaked_and_draws_each_rows_roc(tmp_path):
    """Issue 29 §2 and §5: the sentence is the printed numbers in words (means over seeds), beside
    the controls'; each setting's verification rows are drawn from their roc_<row>.csv."""
    from reconattack.metrics.roc import write_rocs

    cfg = _config("CFGAN")
    cfg["threat"]["report"]["columns"]["retrieval/hog/rank1"] = "higher"
    cfg["metrics"] = {"far": 0.01}
    for seed, ours in ((0, 0.6), (1, 0.7)):
        d = _fake_run(tmp_path, str(seed), [f"seed={seed}"], {
            "test/psnr": 15.0, "test/retrieval/hog/rank1": ours, "test/retrieval/hog/chance": 0.05,
            "test/retrieval/hog/n": 20, "test/retrieval/clip/rank1": "missing: no CLIP weights",
            "test/tpr@far": 0.5, "baseline/mean_image/tpr@far": 0.01,
            "baseline/mean_image/retrieval/hog/rank1": 0.05, "baseline/shuffled/retrieval/hog/rank1": 0.1},
            config=cfg)
        write_rocs(d, {"test": {"far": [0, 0.01, 0.5, 1], "tpr": [0, 0.5, 0.9, 1], "threshold": [float("inf"), 0.9, 0.5, 0.1]},
                       "baseline/mean_image": {"far": [0, 0.5, 1], "tpr": [0, 0.5, 1], "threshold": [float("inf"), 0.5, 0.1]}})
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    section = md[md.index("## What leaked"):md.index("## All metrics")]
    assert ("- **CFGAN** (means of 2 runs): reconstructions found their own original among 20 in 65 % of cases "
            "(nearest by HOG descriptors (no learnt weights)), chance 5 %; mean image: 5 %; shuffled: 10 %.") in section
    assert "At FAR 0.01, the evaluation model accepted 50 % of the genuine pairs" in section
    assert "CLIP" not in section  # missing: never named as what was measured
    assert "## ROC at low FAR" in md and _is_png(tmp_path / "report_roc.png")


def _utility_config(**defence):
    cfg = _defence_config(**defence)
    report = cfg["threat"]["report"]
    report["columns"].update({"retrieval/hog/rank1": "higher", "utility/h_acc@3": "higher", "utility/mma@3": "higher"})
    report["privacy_utility"] = {"x": "utility/h_acc@3", "y": ["retrieval/hog/rank1", "psnr"]}
    return cfg


def test_a_defence_sweep_with_utility_draws_privacy_against_utility(tmp_path):
    """Issue 29 §3: a defence sweep whose runs measured utility (``utility/*``, run metrics) gets
    ``report_privacy_utility.png`` and its section; the points in the sweep's order (its first
    setting, no defence, first), the controls' values beside; the utility columns on the attack's
    rows only. Without utility numbers, or without a defence sweep, there is no figure."""
    from reconattack.report.tables import privacy_utility

    runs = [(1.0, 0.9, 0.8, 0.6, 16.0), (0.5, 0.7, 0.75, 0.4, 15.5), (0.25, 0.3, 0.6, 0.2, 15.0)]
    for i, (keep, h_acc, mma, rank1, psnr) in enumerate(runs):
        _fake_run(tmp_path / "sweep", str(i), [f"defence.keep={keep}"], {
            "test/psnr": psnr, "test/retrieval/hog/rank1": rank1, "test/retrieval/hog/chance": 0.05,
            "baseline/mean_image/psnr": 14.9, "baseline/mean_image/retrieval/hog/rank1": 0.05,
            "baseline/shuffled/psnr": 14.0 + i / 10, "baseline/shuffled/retrieval/hog/rank1": 0.1,
            "utility/h_acc@3": h_acc, "utility/mma@3": mma, "utility/pairs": 20,
            "utility/mma@1": "missing: not measured here"}, config=_utility_config(keep=keep))
    report = build_report(tmp_path / "sweep")
    assert report.defence == "defence.keep"
    panels = privacy_utility(report)
    assert list(panels) == ["test/retrieval/hog/rank1", "test/psnr"]
    (line,) = panels["test/psnr"]
    assert [(v, u.mean, y.mean) for v, u, y in line.points] == [("1", 0.9, 16.0), ("0.5", 0.7, 15.5),
                                                                 ("0.25", 0.3, 15.0)]
    assert dict(line.controls) == {"mean image": [14.9] * 3, "shuffled": [14.0, 14.1, 14.2]}
    assert panels["test/retrieval/hog/rank1"][0].chance == [0.05] * 3
    assert report.series["utility/h_acc@3"][0].points[0][:2] == (0.25, 0.3)  # a run metric's own plot
    written = write_reports(tmp_path / "sweep")
    figure = tmp_path / "sweep" / "report_privacy_utility.png"
    assert figure in written and _is_png(figure)
    md = (tmp_path / "sweep" / "report.md").read_text()
    section = md[md.index("## Privacy–utility"):]
    assert "![report_privacy_utility](report_privacy_utility.png)" in section
    layout = md[md.index("## Paper layout"):]
    assert "utility/h_acc@3 ↑" in layout and "utility/mma@3 ↑" in layout
    cells = _row(md, "CFGAN (defence.keep=0.5)", "## Paper layout")
    assert "0.7000" in cells and "0.7500" in cells
    assert "0.7000" not in _row(md, "mean image", "## Paper layout")  # a run metric is no control's
    # no utility numbers: no figure
    for i, keep in enumerate((1.0, 0.5)):
        _fake_run(tmp_path / "plain", str(i), [f"defence.keep={keep}"], {"test/psnr": 15.0 - i},
                  config=_utility_config(keep=keep))
    assert privacy_utility(build_report(tmp_path / "plain")) == {}
    write_reports(tmp_path / "plain")
    assert not (tmp_path / "plain" / "report_privacy_utility.png").exists()
    assert "## Privacy–utility" not in (tmp_path / "plain" / "report.md").read_text()
    # seeds of one defence setting: no defence sweep, no figure
    for seed in (0, 1):
        _fake_run(tmp_path / "seeds", str(seed), [f"seed={seed}"],
                  {"test/psnr": 15.0, "test/retrieval/hog/rank1": 0.5, "utility/h_acc@3": 0.9},
                  config=_utility_config(keep=0.5))
    write_reports(tmp_path / "seeds")
    assert not (tmp_path / "seeds" / "report_privacy_utility.png").exists()


def test_an_avih_defence_sweep_draws_the_attack_against_the_services_accuracy(tmp_path):
    """The face layout's privacy-utility figure (conf/threat/_avih_face.yaml): utility is the
    service model's TPR@FAR with the encrypted gallery, leakage the attack's TPR@FAR; one point
    per VC weight in the sweep's order."""
    from omegaconf import OmegaConf

    from reconattack.report.tables import privacy_utility
    from tests.helpers import compose_cfg

    cfg = OmegaConf.to_container(compose_cfg(["+experiment=demo_avih", "defence=avih"]), resolve=False)
    for i, (vc, service, ours) in enumerate([(0.3, 0.84, 0.7), (3, 0.8, 0.58), (30, 0.03, 0.01)]):
        cfg["defence"]["vc_weight"] = vc
        _fake_run(tmp_path, str(i), [f"defence.vc_weight={vc}"],
                  {"ours/tpr@far": ours, "service/protected/tpr@far": service, "random/tpr@far": 0.01,
                   "ours/retrieval/hog/rank1": ours / 2}, config=cfg)
    report = build_report(tmp_path)
    assert report.defence == "defence.vc_weight"
    panels = privacy_utility(report)
    assert list(panels) == ["ours/tpr@far", "ours/retrieval/hog/rank1"]
    (line,) = panels["ours/tpr@far"]
    assert [(u.mean, y.mean) for _, u, y in line.points] == [(0.84, 0.7), (0.8, 0.58), (0.03, 0.01)]
    assert ("Random", [0.01] * 3) in line.controls
    write_reports(tmp_path)
    assert _is_png(tmp_path / "report_privacy_utility.png")
