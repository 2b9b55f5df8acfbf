"""AVIH attack paper Table III: the DR attack against other service models, AdaFace IR-50 and
ArcFace IR-50 (AgeDB-30: the table's Original row is AgeDB-30's in Tables I-II), at key shares
1 / 3 / 10 / 70 %.

    python experiments/avih_table3.py --scale demo
    python experiments/avih_table3.py --scale paper --dry-run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from reconattack.engine.recipes import Recipe, Scale, Sweep, main  # noqa: E402

SHARES = "threat.key_share=0.01,0.03,0.1,0.7"
PAPER = Scale(
    sweeps=tuple(Sweep(face, ("+experiment=avih_attack_agedb30", f"face@threat.service={face}", SHARES))
                 for face in ("adaface_ir50", "arcface_ir50")),
    reports=("adaface_ir50", "arcface_ir50"),
    seeds="0,1,2",
    about="Paper scale: avih_attack_agedb30 with the service model swapped (conf/face/adaface_ir50.yaml, "
          "arcface_ir50.yaml: checkpoints under paths.data_dir/models), AdaFace IR-101 still the "
          "evaluation model, at the four key shares, seeds 0, 1, 2; one report per service model "
          "(each encrypts its own gallery).",
)

DEMO_SHARES = "threat.key_share=0.1,0.7"
DEMO = Scale(
    sweeps=(Sweep("service_default", ("+experiment=demo_avih", DEMO_SHARES)),
            Sweep("service_deeper", ("+experiment=demo_avih", "threat.service.net.layers=[2,2,2]", DEMO_SHARES))),
    reports=("service_default", "service_deeper"),
    seeds="0",
    about="Demo scale: demo_avih with its service model (an IR-ResNet of blocks [1,1,1] trained on "
          "the digits) and with a deeper one (blocks [2,2,2]), standing in for the two IR-50 "
          "service models; key shares 10 / 70 %, seed 0, one report per service model. Four "
          "attack runs and two encryptions. Measured on two CPU cores: 6 min 29 s, after avih_table1_2 "
          "had cached the default service model's gallery (the deeper one's models and gallery built).",
)

RECIPE = Recipe(
    name="avih_table3",
    table="AVIH attack paper Table III",
    description="The DR attack against AVIH under other service models.",
    scales={"demo": DEMO, "paper": PAPER},
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
