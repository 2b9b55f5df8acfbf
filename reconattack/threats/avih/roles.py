"""Who holds which gallery image in the AVIH threat (SPEC §3.1): the roles of the encrypted
gallery's jobs, the key share and which pool images it leaks.

- **Roles** (:class:`Role`): the gallery's first ``data.pool`` images are the attacker's pool,
  the rest are held out for evaluation.
- **Encryption jobs** (:func:`encryption_jobs`): every held-out and every pool image is
  encrypted with the target key; with ``encrypt.decoys`` (off by default: nothing reads them, and
  they cost +50 % of the encryption) every pool image once more with another key (the part of the
  gallery that does not share the target key), reported apart as ``encrypt/decoy_*``
  (``encrypt/*`` are always the target-key images). Independent of the key share, so one
  encryption serves a whole key-share sweep.
- **Key share** p (:func:`leaked_count`, :func:`draw_leaked`): the attacker trains on
  ``round(p · pool)`` pool images encrypted with the target key, drawn with the run ``seed``, and
  is evaluated on every held-out image (same key).
"""

from __future__ import annotations

import enum
import math

import numpy as np

from reconattack.errors import ConfigError


class Role(enum.IntEnum):
    """Role of an encrypted gallery image."""

    HELD_OUT = 0  # evaluated, encrypted with the target key
    POOL = 1  # the attacker's pool, encrypted with the target key (the key share leaks some)
    DECOY = 2  # a pool image encrypted once more with another key


def leaked_count(key_share: float, pool: int) -> int:
    """round(p·N) with halves rounded up; ConfigError for p outside (0, 1] or no leaked image."""
    p = float(key_share)
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"threat.key_share must be in (0, 1], got {key_share}")
    n = int(math.floor(p * pool + 0.5))
    if n < 1:
        raise ConfigError(f"threat.key_share={p} leaks no image: round({p} x {pool} pool images) = 0; "
                          f"use threat.key_share >= {0.5 / pool:.4g} or a larger data.pool")
    return n


def encryption_jobs(pool: int, n_gallery: int, num_keys: int, target_key: int = 0,
                    decoys: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which gallery image is encrypted with which key (see the module docstring).

    Returns ``(index, key_id, role)``: int64 gallery indices, int64 key ids, int8 :class:`Role`
    values. Decoys use key ``others[i mod (K-1)]`` for pool image i.
    """
    if num_keys < 1 or not 0 <= target_key < num_keys:
        raise ConfigError(f"need 0 <= threat.target_key < number of keys, got {target_key} and {num_keys}")
    held = np.arange(pool, n_gallery)
    pool_idx = np.arange(pool)
    index = [held, pool_idx]
    key = [np.full(len(held), target_key), np.full(pool, target_key)]
    role = [np.full(len(held), Role.HELD_OUT), np.full(pool, Role.POOL)]
    if decoys and num_keys > 1:
        others = [k for k in range(num_keys) if k != target_key]
        index.append(pool_idx)
        key.append(np.asarray([others[i % len(others)] for i in range(pool)]))
        role.append(np.full(pool, Role.DECOY))
    return (np.concatenate(index).astype(np.int64), np.concatenate(key).astype(np.int64),
            np.concatenate(role).astype(np.int8))


def draw_leaked(role: np.ndarray, key_id: np.ndarray, target_key: int, n_leaked: int,
                run_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The key share's jobs: ``(leaked, held)`` int64 job numbers — ``n_leaked`` pool jobs under
    the target key drawn with the run seed (sorted), and every held-out job."""
    role, key_id = np.asarray(role), np.asarray(key_id)
    pool_slots = np.flatnonzero((role == Role.POOL) & (key_id == target_key))
    leaked = np.sort(np.random.default_rng(run_seed).choice(pool_slots, n_leaked, replace=False))
    return leaked.astype(np.int64), np.flatnonzero(role == Role.HELD_OUT).astype(np.int64)


__all__ = ["Role", "draw_leaked", "encryption_jobs", "leaked_count"]
