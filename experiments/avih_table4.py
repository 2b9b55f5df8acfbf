"""AVIH attack paper Table IV: the ablation of the DR attack on AgeDB-30, GAN loss on / off x
augmented identity loss on / off, at key shares 1 / 3 / 10 / 70 %.

    python experiments/avih_table4.py --scale demo
    python experiments/avih_table4.py --scale paper --dry-run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from reconattack.engine.recipes import Recipe, Scale, Sweep, main  # noqa: E402

PAPER = Scale(
    sweeps=(Sweep("agedb30", ("+experiment=avih_attack_agedb30,avih_attack_agedb30_no_gan,"
                              "avih_attack_agedb30_no_aug,avih_attack_agedb30_identity_only",
                              "threat.key_share=0.01,0.03,0.1,0.7")),),
    reports=("agedb30",),
    seeds="0,1,2",
    about="Paper scale: avih_attack_agedb30 and its ablations _no_gan (augmented identity loss "
          "only), _no_aug (GAN loss, plain identity loss) and _identity_only (neither) at the four "
          "key shares, seeds 0, 1, 2; one report.",
)

DEMO_SHARES = "threat.key_share=0.1,0.7"
# the rows' names as the paper-scale ablation files give them (tests/test_recipes.py compares)
DEMO = Scale(
    sweeps=(Sweep("digits/gan_aug", ("+experiment=demo_avih", DEMO_SHARES)),
            Sweep("digits/no_gan", ("+experiment=demo_avih", "loss.gan=0.0", 'attack.label="Ours w/o GAN loss"',
                                    DEMO_SHARES)),
            Sweep("digits/no_aug", ("+experiment=demo_avih", "loss.augment=null",
                                    'attack.label="Ours w/o augmentation"', DEMO_SHARES)),
            Sweep("digits/identity_only", ("+experiment=demo_avih", "loss.gan=0.0", "loss.augment=null",
                                           'attack.label="Ours w/o GAN loss & augmentation"', DEMO_SHARES))),
    reports=("digits",),
    seeds="0",
    about="Demo scale: demo_avih with the same four loss settings as the paper's ablation files "
          "(tests/test_recipes.py compares them), key shares 10 / 70 %, seed 0, one report; it "
          "stands in for AgeDB-30. Eight attack runs sharing one encrypted gallery; measured on two "
          "CPU cores: 9 min 54 s from an empty cache.",
)

RECIPE = Recipe(
    name="avih_table4",
    table="AVIH attack paper Table IV",
    description="The DR attack without its GAN loss, without the augmentation of its identity loss, "
                "or without both.",
    scales={"demo": DEMO, "paper": PAPER},
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
