"""CFGAN paper Table V: the AdaIN fusion of the fine net against concatenating the SIFT map and
the coarse image at its input ("w/o fusion"), on CelebA-HQ, FFHQ, LSUN bird and LSUN dining room.

    python experiments/cfgan_table5.py --scale demo
    python experiments/cfgan_table5.py --scale paper --dry-run

As the paper's §IV-C says, without the sift loss (its "w fusion" row equals Table VI's
L_pix+per+adv (c&f) row).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from experiments._cfgan import Row, demo_scale, no_sift, paper_scale  # noqa: E402
from reconattack.engine.recipes import Recipe, main  # noqa: E402

# the demo starts its fine net from the trained coarse net, which only the AdaIN fusion can take
# (attack.fine_init_from_coarse); both demo rows start it from scratch, as the paper does
SCRATCH = "attack.fine_init_from_coarse=false"
ROWS = (
    Row("no_fusion", "w/o fusion", celebahq=("+experiment=cfgan_celebahq_no_fusion", "loss.sift=0.0"),
        change=("model.fine.fusion=concat", "loss.sift=0.0"), demo=("model.fine.fusion=concat", SCRATCH)),
    no_sift("fusion", "w fusion", demo=(SCRATCH,)),
)

RECIPE = Recipe(
    name="cfgan_table5",
    table="CFGAN paper Table V",
    description="The fine net with concatenated inputs against the paper's AdaIN fusion.",
    scales={
        "demo": demo_scale(ROWS, about="Demo scale: the CPU demo (100 LFW faces of scikit-image, 64x64; "
                           "its loss has no sift term) with both fusions, its fine net trained from "
                           "scratch (not started from the coarse net as in the demo), standing in for "
                           "all four datasets. Two runs; measured on two CPU cores: 9 min 19 s."),
        "paper": paper_scale(ROWS, about="Paper scale: cfgan_celebahq_no_fusion and cfgan_celebahq_no_sift "
                             "(without the sift loss), the same two models from cfgan_lsun_bird and "
                             "cfgan_lsun_dining_room, and the CelebA-HQ models tested on FFHQ; one seed, "
                             "one report per dataset."),
    },
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
