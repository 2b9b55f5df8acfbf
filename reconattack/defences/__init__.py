"""Defences: what a victim system can do to what it shares before an attacker sees it (SPEC §9).

A defence is a transformation of the leak, chosen with ``defence=<name>`` (``conf/defence/``,
default ``none``) and applied by the threat model to everything the attacker sees: the held-out
leak it is tested on and, because the attacker knows the defence (Kerckhoffs), the training pairs
it makes from its own images. A defence has a strength (a fraction of keypoints, a number of bits,
a noise level, a VC weight) that a Hydra multirun sweeps; ``python -m reconattack.report`` then
draws each metric against it with the controls (:mod:`reconattack.report`).

- :mod:`reconattack.defences.sift` — the SIFT threat's: share fewer keypoints, coarser or noisier
  descriptors, withhold the coordinates (the attacker places descriptors by a reference image) or
  the descriptors.
- :mod:`reconattack.defences.avih` — the AVIH threat's: its own parameters (the VC weight, the
  key share), named as a defence.

A threat names the defences it takes (:attr:`reconattack.threats.base.ThreatModel.defences`) and
refuses others before any work.
"""

from reconattack.defences.avih import avih_defence
from reconattack.defences.sift import SiftDefence, sift_defence

__all__ = ["SiftDefence", "avih_defence", "sift_defence"]
