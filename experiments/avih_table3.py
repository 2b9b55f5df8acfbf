"""AVIH attack paper Table III: the DR attack with AdaFace IR-50 and ArcFace IR-50 models, at key
shares 1 / 3 / 10 / 70 %. The table reads two ways (README, "AVIH Table III has two readings"):
(a) the IR-50 model is the SERVICE model, on AgeDB-30; (b) it is the EVALUATION model, the service
model staying ArcFace IR-18, on CFP-FP. The paper scale runs both.

    python experiments/avih_table3.py --scale demo
    python experiments/avih_table3.py --scale paper --dry-run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from reconattack.engine.recipes import Recipe, Scale, Sweep, main  # noqa: E402

SHARES = "threat.key_share=0.01,0.03,0.1,0.7"
FACES = ("adaface_ir50", "arcface_ir50")
PAPER = Scale(
    sweeps=(*(Sweep(face, ("+experiment=avih_attack_agedb30", f"face@threat.service={face}", SHARES))
              for face in FACES),
            *(Sweep(f"{face}_as_evaluation", (f"+experiment=avih_attack_cfpfp_eval_{face}", SHARES))
              for face in FACES)),
    reports=(*FACES, *(f"{face}_as_evaluation" for face in FACES)),
    seeds="0,1,2",
    about="Paper scale, both readings of the table. (a) avih_attack_agedb30 with the service model "
          "swapped (conf/face/adaface_ir50.yaml, arcface_ir50.yaml: checkpoints under "
          "paths.data_dir/models), AdaFace IR-101 still the evaluation model; each encrypts its own "
          "gallery. (b) avih_attack_cfpfp_eval_{adaface,arcface}_ir50: ArcFace IR-18 service model, "
          "the IR-50 model as the evaluation model (one CFP-FP gallery). Four key shares, seeds "
          "0, 1, 2; one report per model and reading.",
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
    description="The DR attack against AVIH with IR-50 face models (as the service or the evaluation model).",
    scales={"demo": DEMO, "paper": PAPER},
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
