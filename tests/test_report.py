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
