"""Defences against the leak (SPEC §9, README "Defences"): attack quality against the strength of
each defence a system can apply to what it shares, the controls beside it. SIFT: the fraction of
keypoints shared, the descriptor bits, Gaussian noise on the descriptors, coordinates withheld
(descriptors placed by a reference image, the SLI paper's reference-based variant) and positions
only (SLI-B's case); the attacker trains through the same defence. AVIH: the VC weight (the attack
paper's Remark 1), with the key model's own recovery beside the attack's.

What each SIFT defence costs the system is measured in the same runs (``threat.utility``,
reconattack/threats/sift_utility.py: matching accuracy, homography accuracy and AUC, pair
retrieval of each held-out image against a random homography of it; ``utility/*`` in
metrics.json), so each SIFT curve's report also draws leakage against utility
(``report_privacy_utility.png``: the attack's retrieval rank-1 and PSNR against
``utility/h_acc@3``, a point per strength in the sweep's order, the undefended first, the
controls as lines). Coordinates withheld and positions only report the geometric measures as
missing (with the reason) and pair retrieval by descriptors where descriptors are shared.

    python experiments/defences.py --scale demo
    python experiments/defences.py --scale paper --dry-run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from reconattack.engine.recipes import Recipe, Scale, Sweep, main  # noqa: E402

#: each SIFT curve: its directory and the multirun of its defence setting (the first value is no defence)
SIFT_CURVES = (
    ("keep", "defence.keep=1.0,0.5,0.25,0.1"),
    ("bits", "defence.descriptor_bits=8,4,2,1"),
    ("noise", "defence.descriptor_noise=0,8,16,32"),
    ("coordinates", "defence.coordinates=exact,withheld"),
    ("positions_only", "defence.positions_only=false,true"),
)
NO_STORED = ("threat.stored.colmap=null", "threat.stored.native=null", "threat.stored.colmap_native=null")
#: the AVIH curve: its directory and the multirun of the VC weight
AVIH_CURVE = ("avih_vc_weight", ("defence=avih", "defence.vc_weight=0.3,3,30"))


def curves(sift: tuple[str, ...], avih: str) -> dict:
    """A scale's multiruns and reports: every SIFT curve on the experiment overrides ``sift``, the
    AVIH curve on the experiment ``avih``."""
    name, overrides = AVIH_CURVE
    sweeps = (*(Sweep(curve, (*sift, sweep)) for curve, sweep in SIFT_CURVES),
              Sweep(name, (f"+experiment={avih}", *overrides)))
    return {"sweeps": sweeps, "reports": tuple(s.dir for s in sweeps)}


DEMO = Scale(
    **curves(("+experiment=demo_defence_sift",), "demo_avih"),
    seeds="0",
    about="Demo scale: demo_defence_sift (CFGAN's coarse net, 400 steps, on the SIFT of the 100 "
          "scikit-image LFW faces at 64x64, 20 held out) trained and tested through each SIFT defence "
          "at each strength, and demo_avih (digits, key share 70 %) at VC weights 0.3 / 3 / 30; seed 0, "
          "one report per curve (a row per strength, each metric against it with the controls; for SIFT "
          "also leakage against the utility the defence leaves, measured in the same runs).",
)

PAPER = Scale(
    **curves(("+experiment=cfgan_celebahq", "defence=sift", *NO_STORED), "avih_attack_lfw"),
    seeds="0",
    about="Paper scale: cfgan_celebahq (CFGAN at the paper's sizes on CelebA-HQ, GPUs) trained and "
          "tested through each SIFT defence at each strength, and avih_attack_lfw (key share 10 %) at "
          "VC weights 0.3 / 3 / 30 (each weight encrypts its own gallery); seed 0 (add seed=0,1,2 for "
          "error bars), one report per curve (SIFT: with its privacy-utility figure).",
)

RECIPE = Recipe(
    name="defences",
    table="Defences (SPEC §9)",
    description="Attack quality against the strength of each defence, the controls beside it.",
    scales={"demo": DEMO, "paper": PAPER},
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
