"""Seeded construction: build something from a seed without touching the global RNG.

Networks, random key models and artifacts are built inside :func:`seeded`, so their content
depends on their own seed only, never on what ran before them (which artifacts already existed,
which model was built first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int | None, all_devices: bool = False) -> Iterator[None]:
    """Run the block with the torch RNG seeded by ``seed``; the global RNG state is restored
    afterwards. ``None`` runs the block on the global RNG unchanged.

    By default only the CPU generator is forked and seeded (building networks); with
    ``all_devices`` the CUDA generators too (training inside the block, e.g. an artifact)."""
    if seed is None:
        yield
        return
    if all_devices:
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))
            yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield
