"""CFGAN paper Table VI: the loss, L_pix+per+adv alone, with the style loss, with the sift loss;
each for the coarse net alone (c) and for CFGAN (c&f), on CelebA-HQ, FFHQ, LSUN bird and LSUN
dining room.

    python experiments/cfgan_table6.py --scale demo
    python experiments/cfgan_table6.py --scale paper --dry-run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from experiments._cfgan import Row, demo_scale, no_sift, paper_scale  # noqa: E402
from reconattack.engine.recipes import Recipe, main  # noqa: E402

COARSE = "attack.stages=[coarse]"
# the style rows: as conf/experiment/cfgan_celebahq_style.yaml (tests/test_recipes.py compares them)
STYLE = ("loss.sift=0.0", "loss.style=250.0")
ROWS = (
    Row("c_pix_per_adv", "L_pix+per+adv (c)", celebahq=("+experiment=cfgan_celebahq_no_sift", COARSE),
        change=("loss.sift=0.0", COARSE), demo=(COARSE,), stage="coarse", demo_label="L_pix (c)"),
    Row("c_style", "w L_style (c)", celebahq=("+experiment=cfgan_celebahq_style", COARSE),
        change=(*STYLE, COARSE), demo=None, stage="coarse"),
    Row("c_sift", "w L_sift (c)", celebahq=("+experiment=cfgan_celebahq_coarse_only",),
        change=(COARSE,), demo=(COARSE, "loss.sift=0.01"), stage="coarse"),
    no_sift("cf_pix_per_adv", "L_pix+per+adv (c&f)", demo_label="L_pix (c&f)"),
    Row("cf_style", "w L_style (c&f)", celebahq=("+experiment=cfgan_celebahq_style",), change=STYLE, demo=None),
    Row("cf_sift", "w L_sift (c&f)", celebahq=("+experiment=cfgan_celebahq",), change=(), demo=("loss.sift=0.01",)),
)

RECIPE = Recipe(
    name="cfgan_table6",
    table="CFGAN paper Table VI",
    description="The sift loss and the style loss, for the coarse net alone and for CFGAN.",
    scales={
        "demo": demo_scale(ROWS, about="Demo scale: the CPU demo (100 LFW faces of scikit-image, 64x64, "
                           "standing in for all four datasets), coarse alone and coarse + fine, with "
                           "its own loss (pixel only: conf/loss/cfgan_demo.yaml) and with the sift loss "
                           "at the paper's 0.01 added. The style rows are left out: the style loss "
                           "needs pretrained VGG19 weights, which an offline machine does not have. "
                           "Four runs; measured on two CPU cores: 24 min 33 s (the sift loss more "
                           "than doubles a step's time)."),
        "paper": paper_scale(ROWS, about="Paper scale: the six models on CelebA-HQ (cfgan_celebahq, "
                             "_no_sift and _style; _coarse_only, and _no_sift and _style with the coarse "
                             "stage alone), the same six from cfgan_lsun_bird and cfgan_lsun_dining_room, and "
                             "the CelebA-HQ models tested on FFHQ; one seed, one report per dataset."),
    },
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
