"""Building objects from configs.

:func:`build` is ``hydra.utils.instantiate`` that lets the error of the called class through
unchanged: Hydra wraps every exception of a ``_target_`` in an ``InstantiationException``, which
would turn a clear ``DataNotFoundError`` ("no data at ...") into a generic one.
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import OmegaConf


def build(cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg, *args, **kwargs)``, re-raising the target's own exception."""
    try:
        return hydra.utils.instantiate(cfg, *args, **kwargs)
    except InstantiationException as exc:
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (anything else is returned as is)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def factory(cfg: Any, **kwargs: Any):
    """A zero-argument callable that builds ``cfg`` (e.g. a network inside a seeded block)."""
    return lambda: build(cfg, **kwargs)
