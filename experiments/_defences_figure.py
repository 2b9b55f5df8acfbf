"""The README's picture of the defence curves: one panel per curve of ``experiments/defences.py``,
the attack's metric against the defence's strength with the controls dashed, read from the
curves' run directories with :func:`reconattack.report.build_report` (what ``python -m
reconattack.report`` tables and plots one by one).

    python experiments/_defences_figure.py outputs/experiments/defences/demo experiments/figures/defences_demo.png
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from reconattack.report import build_report  # noqa: E402
from reconattack.report.figures import _png, _pyplot  # noqa: E402
from reconattack.utils.files import atomic_write_bytes  # noqa: E402

#: (curve directory, the metric drawn)
PANELS = (("keep", "test/psnr"), ("bits", "test/psnr"), ("noise", "test/psnr"),
          ("coordinates", "test/psnr"), ("positions_only", "test/psnr"), ("avih_vc_weight", "ours/tpr@far"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="the output directory of experiments/defences.py")
    ap.add_argument("out", type=Path, help="the PNG to write")
    args = ap.parse_args(argv)
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (curve, metric) in zip(axes.flat, PANELS):
        report = build_report(args.root / curve)
        lines = report.series.get(metric, [])
        if not lines:
            ax.set_title(f"{curve}: no runs", fontsize=9)
            continue
        for s in lines:
            ax.errorbar([p[0] for p in s.points], [p[1] for p in s.points], yerr=[p[2] or 0.0 for p in s.points],
                        marker="o" if s.attack else None, linestyle="-" if s.attack else "--", capsize=3,
                        label=s.label, alpha=1.0 if s.attack else 0.7)
        ticks = sorted({p[0] for s in lines for p in s.points})
        if ticks[0] > 0 and ticks[-1] / ticks[0] >= 10 and not report.x_labels:  # as the report's plots
            ax.set_xscale("log")
        ax.set_xticks(ticks, [report.x_labels.get(x, f"{x:g}") for x in ticks])
        ax.minorticks_off()
        ax.set_xlabel(report.layout.sweep_label, fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.set_title(report.layout.sweep_label.split(" (")[0], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, _png(fig))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
