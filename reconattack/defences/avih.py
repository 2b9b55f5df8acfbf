"""What an AVIH deployment can do about the reconstruction attack (``defence=avih``, SPEC §9): its
own parameters, named as a defence so that a multirun over them is a defence curve in the report.

- ``vc_weight`` — the weight of the visual-confusion term of the encryption
  (``threat.encrypt.loss.vc``; the AVIH attack paper's Remark 1: larger resists attackers and
  worsens the key model's own recovery, which the ``key_model`` row reports beside the attack's);
- ``key_share`` — the share of the gallery encrypted with the target key (``threat.key_share``).

``null`` keeps the threat's value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from reconattack.defences.base import META_KEYS
from reconattack.errors import ConfigError

log = logging.getLogger(__name__)

KEYS = ("vc_weight", "key_share")


def avih_defence(defence: Mapping[str, Any] | None, encrypt: Any, key_share: float) -> tuple[Any, float]:
    """``(encrypt config, key share)`` of an AVIH threat under the ``defence`` config: unchanged
    unless it is ``name: avih`` with a value set."""
    d = dict(defence or {})
    if d.get("name") != "avih":
        return encrypt, key_share
    unknown = set(d) - {*KEYS, *META_KEYS}
    if unknown:
        raise ConfigError(f"defence: unknown AVIH defence key(s) {sorted(unknown)}; expected {list(KEYS)}")
    if d.get("vc_weight") is not None:
        if float(d["vc_weight"]) < 0:
            raise ConfigError(f"defence.vc_weight must be >= 0, got {d['vc_weight']}")
        log.info("defence=avih: VC weight %g (threat.encrypt.loss.vc: %s)", float(d["vc_weight"]), encrypt.loss.vc)
        encrypt = OmegaConf.merge(encrypt, {"loss": {"vc": float(d["vc_weight"])}})
    if d.get("key_share") is not None:
        log.info("defence=avih: key share %g (threat.key_share: %s)", float(d["key_share"]), key_share)
        key_share = float(d["key_share"])
    return encrypt, key_share


__all__ = ["KEYS", "avih_defence"]
