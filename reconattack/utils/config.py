"""Building objects from configs.

:func:`build` is ``hydra.utils.instantiate`` that lets the error of the called class through
unchanged: Hydra wraps every exception of a ``_target_`` in an ``InstantiationException``, which
would turn a clear ``DataNotFoundError`` ("no data at ...") into a generic one. A key the class
does not take (a typo in a YAML file) or a required one that is missing is a
:class:`~reconattack.errors.ConfigError` naming the config key and what the class takes.

Hydra and OmegaConf are imported where they are used, not with this module: the attack and
threat modules import it, and ``benchmarks/gpu_check.py`` builds their stages with explicit
arguments on machines that have PyTorch and Lightning but not Hydra.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from reconattack.errors import ConfigError

#: the checkout that holds the ``reconattack`` package and ``conf/`` (an editable install)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: the Hydra configs (``python -m reconattack.run`` composes ``conf/config.yaml``)
CONF_DIR = PROJECT_ROOT / "conf"


def build(cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg, *args, **kwargs)``, re-raising the target's own exception
    (an unknown or missing key: :class:`~reconattack.errors.ConfigError`)."""
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(cfg, *args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if cause is None:
            raise
        if isinstance(cause, TypeError):
            wrong = _signature_mismatch(cfg, cause, kwargs)
            if wrong is not None:
                raise wrong from None
        raise cause from None


def _signature_mismatch(cfg: Any, err: TypeError, kwargs: dict) -> ConfigError | None:
    """A ConfigError when ``err`` says the config's ``_target_`` was called with a keyword it
    does not take or without one it needs, per the target's own signature (else None: a
    TypeError from inside the constructor is a bug and keeps its traceback)."""
    import hydra
    from omegaconf import DictConfig

    target = cfg.get("_target_") if isinstance(cfg, (dict, DictConfig)) else None
    m = re.search(r"(unexpected keyword argument|missing \d+ required (?:positional|keyword-only) "
                  r"arguments?:) (.+)$", str(err))
    if target is None or m is None:
        return None
    try:
        obj = hydra.utils.get_object(str(target))
        inspect.signature(obj)
    except (ValueError, TypeError, ImportError, AttributeError):
        return None
    # the callables the call went through: the target, and for a class every __init__ of its MRO
    # (subclasses pass their other keywords on to their bases with **kwargs)
    chain = ([c.__init__ for c in obj.__mro__ if "__init__" in vars(c)] if inspect.isclass(obj) else [obj])
    raiser = str(err).split("(", 1)[0]
    if not any(getattr(f, "__qualname__", None) == raiser for f in chain):
        return None  # raised by something the constructor called: a bug
    accepted = []
    for f in chain:
        for p in inspect.signature(f).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self" and p.name not in accepted:
                accepted.append(p.name)
    names = re.findall(r"'(\w+)'", m.group(2))
    where = _full_key(cfg)
    takes = ", ".join(accepted) or "nothing"
    if m.group(1).startswith("unexpected"):
        if not names or names[0] in accepted:
            return None
        source = "given by the code" if names[0] in kwargs else "in its config"
        return ConfigError(f"{where}{names[0]}: {target} does not take {names[0]!r} ({source}); it takes: {takes}")
    if not names or any(n not in accepted for n in names):
        return None
    return ConfigError(f"{where.rstrip('.') or 'config'}: {target} needs {', '.join(names)} (missing in its "
                       f"config); it takes: {takes}")


def _full_key(cfg: Any) -> str:
    """``"model.coarse."`` for a config node at that place (empty when unknown)."""
    from omegaconf import DictConfig

    if isinstance(cfg, DictConfig):
        try:
            key = cfg._get_full_key(None)
        except Exception:  # noqa: BLE001 - a best-effort label
            key = ""
        return f"{key}." if key else ""
    return ""


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (anything else is returned as is)."""
    omegaconf = sys.modules.get("omegaconf")  # not imported: ``node`` cannot be one of its configs
    if omegaconf is not None and omegaconf.OmegaConf.is_config(node):
        return omegaconf.OmegaConf.to_container(node, resolve=True)
    return node


def factory(cfg: Any, **kwargs: Any):
    """A zero-argument callable that builds ``cfg`` (e.g. a network inside a seeded block)."""
    return lambda: build(cfg, **kwargs)


def as_hw(size) -> tuple[int, int]:
    """An image size as ``(H, W)``: an int is square; a pair (list, tuple, ListConfig) is (H, W).

    Raises:
        ConfigError: anything else, or a side below 1.
    """
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        hw = (int(size), int(size))
    else:
        try:
            hw = () if isinstance(size, str | bool) else tuple(int(s) for s in size)
        except (TypeError, ValueError):
            hw = ()
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"an image size is an int or [H, W] of positive ints, got {size!r}")
    return hw
