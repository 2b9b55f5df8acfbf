"""Errors a user can cause by configuration (as opposed to bugs)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work (e.g. an attack that cannot read the threat's leak)."""
