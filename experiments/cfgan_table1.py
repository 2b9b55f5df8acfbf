"""CFGAN paper Table I: CFGAN and the re-implemented SIFT baselines IVR, INV and SLI on CelebA-HQ,
FFHQ (the CelebA-HQ models, test only), LSUN bird and LSUN dining room; SSIM / PSNR / FID (and
LPIPS).

    python experiments/cfgan_table1.py --scale demo              # CPU, embedded faces
    python experiments/cfgan_table1.py --scale paper --dry-run   # GPUs, the four datasets

GleaD and EVDVAE are SIFT-conditioned adaptations (the CFGAN paper does not say how it
conditioned them): reconattack/attacks/glead.py and evdvae.py say what was chosen.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's reconattack

from reconattack.engine.recipes import Checkpoint, Recipe, Scale, Sweep, main  # noqa: E402

#: attack -> its final stage (the checkpoint the FFHQ evaluation loads)
METHODS = {"cfgan": "fine", "ivr": "ivr", "inv": "refine", "sli": "image", "glead": "glead", "evdvae": "evdvae"}

PAPER = Scale(
    sweeps=(
        *(Sweep(f"celebahq/{m}", (f"+experiment={m}_celebahq",), by_seed=True) for m in METHODS),
        *(Sweep(f"ffhq/{m}", (f"+experiment={m}_ffhq_eval", Checkpoint(stage, f"celebahq/{m}")))
          for m, stage in METHODS.items()),
        *(Sweep(f"{d}/{m}", (f"+experiment={m}_{d}",)) for d in ("lsun_bird", "lsun_dining_room")
          for m in METHODS),
    ),
    reports=("celebahq", "ffhq", "lsun_bird", "lsun_dining_room"),
    seeds="0",
    about="Paper scale: the paper model of each method at 256x256 trained on CelebA-HQ, LSUN bird "
          "and LSUN dining room (conf/experiment/{cfgan,ivr,inv,sli,glead,evdvae}_*.yaml, data under paths.data_dir), "
          "then each CelebA-HQ model tested on FFHQ; one report per dataset (a column block of the "
          "table). One seed, as the paper gives one number per cell.",
)

DEMO = Scale(
    sweeps=(Sweep("faces", ("+experiment=demo_sift_baselines",)),),
    reports=("faces",),
    seeds="0",
    about="Demo scale: demo_sift_baselines, the six attacks at CPU size on the SIFT maps of the "
          "100 LFW faces of scikit-image (64x64, 80 train / 20 test; SLI on its own uncompressed map), "
          "one report. It stands in for the CelebA-HQ column only (no second face set or LSUN ships "
          "offline). Measured on two CPU cores, one at a time: CFGAN 5 min 36 s, IVR 1 min 25 s, INV "
          "3 min 58 s, SLI 3 min 50 s, GleaD 2 min 9 s; EVDVAE 3 min 51 s with a test run sharing the cores.",
)

RECIPE = Recipe(
    name="cfgan_table1",
    table="CFGAN paper Table I",
    description="CFGAN, IVR, INV, SLI, GleaD and EVDVAE reconstruct images from their SIFT features.",
    scales={"demo": DEMO, "paper": PAPER},
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
