"""AVIH attack paper Tables V and VI (Appendix A): the DR attack on AVIH-encrypted
re-identification galleries — Market-1501 (persons) and VeRi-776 (vehicles) — at key shares
1 / 3 / 10 / 70 %, beside the Original, Protected and Key model rows (and a Random row the paper
does not have). Table V is Rank-1, Rank-5 and mAP of the original queries against each row's
gallery (TransReID DeiT as the evaluation model), Table VI the image metrics (MSE, LPIPS, PSNR,
CLIP, SSIM) of the same runs.

    python experiments/avih_table5_6.py --scale demo
    python experiments/avih_table5_6.py --scale paper --dry-run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from reconattack.engine.recipes import Recipe, Scale, Sweep, main  # noqa: E402

PAPER = Scale(
    sweeps=tuple(Sweep(d, (f"+experiment=avih_attack_{d}", "threat.key_share=0.01,0.03,0.1,0.7"))
                 for d in ("market1501", "veri")),
    reports=("market1501", "veri"),
    seeds="0,1,2",
    about="Paper scale: avih_attack_{market1501,veri} (TransReID ViT service model, TransReID DeiT "
          "evaluation model, a 2,000-image gallery of the dataset's test split, LPW / Stanford Cars as "
          "auxiliary sets, VC kernel 8 for vehicles, the attacker trained 800 steps; data and "
          "checkpoints under paths.data_dir, README) at the four key shares, seeds 0, 1, 2 "
          "(mean ± std); one report per dataset. Each dataset's gallery is encrypted once and shared "
          "by its jobs.",
)

DEMO = Scale(
    sweeps=(Sweep("digit_persons", ("+experiment=demo_reid", "threat.key_share=0.1,0.7")),),
    reports=("digit_persons",),
    seeds="0,1",
    about="Demo scale: demo_reid (persons made of scikit-learn digits, 32x16, seen by 4 cameras; "
          "small trained TransReID service and evaluation models; a 300-image gallery) at key shares "
          "10 / 70 % of its 150-image attacker pool, seeds 0 and 1, one report. It stands in for one "
          "dataset's block.",
)

RECIPE = Recipe(
    name="avih_table5_6",
    table="AVIH attack paper Tables V and VI",
    description="The DR attack against AVIH over the key share, on person and vehicle re-identification.",
    scales={"demo": DEMO, "paper": PAPER},
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
