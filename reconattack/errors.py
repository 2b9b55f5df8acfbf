"""Errors a user can cause and fix (as opposed to bugs).

:class:`UserError` is the base of every such error: a configuration that cannot work, a missing
or malformed input file, missing pretrained weights. ``python -m reconattack.run`` prints it as
one line (``TypeName: message``) and exits with status 2; every other exception is a bug and
keeps its traceback. Each subclass also keeps a builtin base (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` and the like still catch it.

The subclasses tied to one module live there (:class:`~reconattack.data.images.DataNotFoundError`,
:class:`~reconattack.data.images.ImageReadError`, :class:`~reconattack.data.faces.BinFormatError`,
:class:`~reconattack.utils.weights.MissingWeightsError`,
:class:`~reconattack.utils.checkpoints.CheckpointMismatchError`,
:class:`~reconattack.utils.checkpoints.CheckpointFormatError`). This module imports nothing from
the package, so any module can import it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user caused and can fix: configuration, missing or malformed input files,
    weights; printed as one line, exit status 2."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot work (e.g. an attack that cannot read the threat's leak)."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A path the user gave (in the config or on the command line) does not exist."""


class NonFiniteLossError(UserError, RuntimeError):
    """A training loss became NaN or infinite (a learning rate or loss weight the run cannot
    take, bad input data); raised before the update, so the weights (and the last checkpoint) are
    the last good ones. The message names the stage, step and loss term."""
