"""The DR attack on the AVIH threat: its tiny test settings (the stage itself is tested in
tests/threats/test_avih_units.py beside the threat's data)."""

from __future__ import annotations


def tiny(cfg) -> list[str]:
    """Settings that make any DR-attack experiment run in seconds on CPU (used by tests.helpers)."""
    return ["model.attacker.net.base=4", "model.attacker.net.depth=2", "model.discriminator.ndf=4",
            "model.discriminator.n_layers=1", "attack.num_samples=2"]
