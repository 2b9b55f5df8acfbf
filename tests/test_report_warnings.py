"""The report marks the rows the runs' collapse checks flagged (metrics.json ``warnings``): ⚠ beside
the row in the markdown and LaTeX tables, a legend under the table, the warnings listed, the number
of flagged runs in the CSV files; the numbers stay."""

from __future__ import annotations

import csv

from reconattack.report import build_report, write_reports
from tests.test_report import _config, _fake_run, _row

FLAT = {"row": "test", "check": "output_spread", "value": 0.0012, "threshold": 0.1,
        "message": "the reconstructions hardly depend on the input"}


def _runs(root):
    """CFGAN seeds 0 and 1, the first flagged; IVR, not flagged; GleaD, its run flagged."""
    runs = [("CFGAN", 0, 16.0, [FLAT]), ("CFGAN", 1, 18.0, []), ("IVR", 0, 14.0, []),
            ("GleaD", 0, 5.72, [FLAT, {**FLAT, "check": "saturation", "message": "the outputs saturate"}])]
    for i, (label, seed, psnr, warnings) in enumerate(runs):
        _fake_run(root, str(i), [f"attack={label.lower()}_demo", f"seed={seed}"],
                  {"test/psnr": psnr, "test/ssim": 0.5, "baseline/mean_image/psnr": 15.0,
                   "baseline/mean_image/ssim": 0.46, "baseline/shuffled/psnr": psnr,
                   "baseline/shuffled/ssim": 0.3, "warnings": warnings},
                  config=_config(label))


def test_flagged_rows_are_marked_and_their_numbers_stay(tmp_path):
    _runs(tmp_path)
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    layout = md[md.index("## Paper layout"):]
    assert _row(layout, "CFGAN ⚠")[1] == "17.0000 ± 1.4142"  # the mean of both seeds, flagged one included
    assert _row(layout, "GleaD ⚠")[1] == "5.7200"
    assert _row(layout, "IVR")[1] == "14.0000" and "| IVR ⚠ |" not in layout
    # the controls are not flagged (no warning names their rows)
    assert "| shuffled (GleaD) |" in layout and "| mean image (attack=glead_demo) |" in layout
    legend = layout[layout.index("⚠ flagged by the runs' collapse checks"):]
    assert "do not read them as the method's result" in legend.splitlines()[0]
    assert "- CFGAN (1 of 2 runs: 0): the reconstructions hardly depend on the input" in legend
    assert "- GleaD (run 3): the outputs saturate" in legend
    # the warnings listed, a line each, with the statistic and its threshold
    listed = md[md.index("## Warnings"):]
    assert "| 0 | test | output_spread | 0.0012 | 0.1 | the reconstructions hardly depend on the input |" in listed
    assert listed.count("| 3 | test |") == 2
    # "All metrics": the settings with a flagged run; warnings is no metric
    assert "| attack=cfgan_demo ⚠ |" in md and "| attack=ivr_demo |" in md
    assert "warnings" not in build_report(tmp_path).metrics


def test_the_csv_and_latex_tables_say_so(tmp_path):
    _runs(tmp_path)
    write_reports(tmp_path)
    with open(tmp_path / "report_layout.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    flagged = {r["row"]: r["flagged runs"] for r in rows if r["column"] == "psnr"}
    assert flagged["CFGAN"] == "1" and flagged["GleaD"] == "1" and flagged["IVR"] == "0"
    assert flagged["shuffled (GleaD)"] == "0"
    with open(tmp_path / "report.csv", newline="") as f:
        per_setting = {r["setting"]: r["flagged runs"] for r in csv.DictReader(f)}
    assert per_setting == {"attack=cfgan_demo": "1", "attack=ivr_demo": "0", "attack=glead_demo": "1"}
    tex = (tmp_path / "report.tex").read_text()
    assert r"CFGAN \textsuperscript{(!)} &" in tex and r"GleaD \textsuperscript{(!)} &" in tex
    assert r"IVR &" in tex and r"\textsuperscript{(!)} flagged by the runs' collapse checks" in tex


def test_runs_without_warnings_or_from_before_the_checks_are_not_marked(tmp_path):
    for i, warnings in enumerate(([], None)):  # checked and clean; written before the checks existed
        metrics = {"test/psnr": 16.0 + i, "test/ssim": 0.5}
        if warnings is not None:
            metrics["warnings"] = warnings
        _fake_run(tmp_path, str(i), ["attack=cfgan_demo", f"seed={i}"], metrics, config=_config("CFGAN"))
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "⚠" not in md and "## Warnings" not in md
