"""CFGAN paper Table III: the 2x2 compression of the SIFT map, with and without (CelebA-HQ).

    python experiments/cfgan_table3.py --scale demo
    python experiments/cfgan_table3.py --scale paper --dry-run

The table's "w compression" row equals Tables IV-VI's CFGAN without the sift loss (0.7402 / 20.81
/ 43.38): the paper studies the architecture "in the absence of sift loss" (§IV-C), so both rows
train without it (loss.sift=0).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from experiments._cfgan import Row, demo_scale, no_sift, paper_scale  # noqa: E402
from reconattack.engine.recipes import Recipe, main  # noqa: E402

ROWS = (
    Row("no_compression", "w/o compression", celebahq=("+experiment=cfgan_celebahq_no_compression", "loss.sift=0.0"),
        change=("threat.compress=false", "loss.sift=0.0"), demo=("threat.compress=false",)),
    no_sift("compression", "w compression"),
)

RECIPE = Recipe(
    name="cfgan_table3",
    table="CFGAN paper Table III",
    description="CFGAN fed the 256x256 SIFT map without compression against the compressed 128x128 map.",
    scales={
        "demo": demo_scale(ROWS, about="Demo scale: the CPU demo (100 LFW faces of scikit-image, 64x64; "
                           "its loss has no sift term) with and without compression, standing in for "
                           "CelebA-HQ. Two runs; measured on two CPU cores: 19 min 1 s (the run on "
                           "the uncompressed map alone 12 min)."),
        "paper": paper_scale(ROWS, datasets=("celebahq",),
                             about="Paper scale: cfgan_celebahq_no_compression and cfgan_celebahq_no_sift "
                                   "(both without the sift loss) on CelebA-HQ, one seed, one report."),
    },
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
