"""Errors a user can cause by configuration (as opposed to bugs)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work (e.g. an attack that cannot read the threat's leak)."""


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; raised before the update, so the weights (and the
    last checkpoint) are the last good ones. The message names the stage, step and loss term."""
