"""AVIH attack paper Tables I and II: the DR attack on AVIH-encrypted galleries of AgeDB-30, LFW
and CFP-FP at key shares 1 / 3 / 10 / 70 %, beside the Original, Protected, Key model and Random
rows. Table I is the TPR at FPR 0.01 (tpr@far), Table II the image metrics (MSE, LPIPS, PSNR,
CLIP, SSIM) of the same runs.

    python experiments/avih_table1_2.py --scale demo
    python experiments/avih_table1_2.py --scale paper --dry-run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from reconattack.engine.recipes import Recipe, Scale, Sweep, main  # noqa: E402

PAPER = Scale(
    sweeps=tuple(Sweep(d, (f"+experiment=avih_attack_{d}", "threat.key_share=0.01,0.03,0.1,0.7"))
                 for d in ("agedb30", "lfw", "cfpfp")),
    reports=("agedb30", "lfw", "cfpfp"),
    seeds="0,1,2",
    about="Paper scale: avih_attack_{agedb30,lfw,cfpfp} (ArcFace IR-18 service model, AdaFace IR-101 "
          "evaluation model, 2,000-image gallery of the verification .bin, CelebA as auxiliary set; "
          "data and face models under paths.data_dir, README) at the four key shares, seeds 0, 1, 2 "
          "(mean ± std); one report per dataset. Each dataset's gallery is encrypted once and shared "
          "by its jobs.",
)

DEMO = Scale(
    sweeps=(Sweep("digits", ("+experiment=demo_avih", "threat.key_share=0.03,0.1,0.7")),),
    reports=("digits",),
    seeds="0,1",
    about="Demo scale: demo_avih (scikit-learn digits as faces, 32x32, small trained service and "
          "evaluation models, a 300-image gallery) at key shares 3 / 10 / 70 % of its 150-image "
          "attacker pool (1 % would be 2 images), seeds 0 and 1, one report. It stands in for one "
          "dataset's block. Measured on two CPU cores: 7 min 56 s from an empty cache (building the service and evaluation models and the encrypted gallery took about 2 minutes of it).",
)

RECIPE = Recipe(
    name="avih_table1_2",
    table="AVIH attack paper Tables I and II",
    description="The DR attack against AVIH over the key share, on three face verification sets.",
    scales={"demo": DEMO, "paper": PAPER},
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
