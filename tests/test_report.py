import json

import yaml

from reconattack.report import write_reports


def _fake_run(root, name, overrides, metrics):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / "metrics.json").write_text(json.dumps(metrics))


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
                   "baseline/shuffled/psnr": psnr - 2, "baseline/shuffled/ssim": 0.3})
        (tmp_path / str(i) / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_config(label), sort_keys=False))
    write_reports(tmp_path)
    md = (tmp_path / "report.md").read_text()
    layout = md[md.index("## Paper layout"):]
    assert "| row | ssim ↑ | psnr ↑ | lpips ↓ |" in layout
    assert "| CFGAN | 0.5000 ± 0.0000 | 17.0000 ± 1.4142 | missing |" in layout
    assert "| IVR | 0.5000 ± 0.0000 | 14.2500 ± 0.3536 | missing |" in layout
    assert layout.count("| mean image |") == 1  # the same for both attacks: once
    assert "| shuffled (CFGAN) |" in layout and "| shuffled (IVR) |" in layout
