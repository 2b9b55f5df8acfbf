"""CFGAN paper Table IV: the two-stage method, the coarse net alone ("w/o fine net") against
coarse + fine, on CelebA-HQ, FFHQ, LSUN bird and LSUN dining room.

    python experiments/cfgan_table4.py --scale demo
    python experiments/cfgan_table4.py --scale paper --dry-run

As the paper's §IV-C says, without the sift loss (its rows equal Table VI's L_pix+per+adv rows).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from experiments._cfgan import Row, demo_scale, no_sift, paper_scale  # noqa: E402
from reconattack.engine.recipes import Recipe, main  # noqa: E402

ROWS = (
    Row("coarse_only", "w/o fine net", celebahq=("+experiment=cfgan_celebahq_coarse_only", "loss.sift=0.0"),
        change=("attack.stages=[coarse]", "loss.sift=0.0"), demo=("attack.stages=[coarse]",), stage="coarse"),
    no_sift("coarse_fine", "w fine net"),
)

RECIPE = Recipe(
    name="cfgan_table4",
    table="CFGAN paper Table IV",
    description="The coarse net alone against CFGAN's coarse-to-fine reconstruction.",
    scales={
        "demo": demo_scale(ROWS, about="Demo scale: the CPU demo (100 LFW faces of scikit-image, 64x64; "
                           "its loss has no sift term) with its coarse stage alone and with both "
                           "stages, standing in for all four datasets. Two runs; measured on two CPU "
                           "cores: 9 min 55 s."),
        "paper": paper_scale(ROWS, about="Paper scale: cfgan_celebahq_coarse_only and cfgan_celebahq_no_sift "
                             "(without the sift loss), the same two models from cfgan_lsun_bird and "
                             "cfgan_lsun_dining_room, and the CelebA-HQ models tested on FFHQ; one seed, "
                             "one report per dataset."),
    },
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
