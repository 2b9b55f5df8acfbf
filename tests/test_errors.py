"""User errors: every error a user causes is a :class:`~reconattack.errors.UserError` (one line
and exit status 2 on the command line) and keeps its builtin base; the checks of user input
raise them, internal checks do not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from reconattack.data.faces import BinFormatError
from reconattack.data.images import DataNotFoundError, ImageReadError
from reconattack.errors import ConfigError, InputNotFoundError, UserError
from reconattack.utils.checkpoints import CheckpointFormatError, CheckpointMismatchError
from reconattack.utils.weights import MissingWeightsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls,base", [
    (ConfigError, ValueError),
    (InputNotFoundError, FileNotFoundError),
    (BinFormatError, ValueError),
    (ImageReadError, ValueError),
    (DataNotFoundError, FileNotFoundError),
    (MissingWeightsError, RuntimeError),
    (CheckpointMismatchError, ValueError),
    (CheckpointFormatError, ValueError),
], ids=lambda v: v.__name__)
def test_each_user_error_is_a_user_error_and_keeps_its_builtin_base(cls, base):
    assert issubclass(cls, UserError) and issubclass(cls, base)
    with pytest.raises(base, match="what to fix"):
        raise cls("what to fix")


def test_errors_module_imports_nothing_from_the_package():
    tree = ast.parse((ROOT / "reconattack" / "errors.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("reconattack"), node.module
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("reconattack") for a in node.names)


def test_user_input_checks_raise_user_errors(tmp_path):
    from reconattack.engine.context import require_file
    from reconattack.metrics.suite import MetricSuite
    from reconattack.models.face import load_face_checkpoint
    from reconattack.models.keys import UNet
    from reconattack.utils.checkpoints import read_checkpoint

    with pytest.raises(InputNotFoundError, match="attack.resume.fine"):
        require_file(str(tmp_path / "nope.ckpt"), "attack.resume.fine")
    with pytest.raises(InputNotFoundError):
        read_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(InputNotFoundError):
        load_face_checkpoint(torch.nn.Linear(1, 1), tmp_path / "nope.pth")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="bad.ckpt"):
        read_checkpoint(bad)
    with pytest.raises(ConfigError, match="unknown metrics"):
        MetricSuite(metrics=["mse", "nope"])
    with pytest.raises(ConfigError, match="norm"):
        UNet(norm="nope")


def test_internal_checks_are_not_user_errors():
    from reconattack.metrics import functional as MF

    with pytest.raises(ValueError) as err:
        MF.mse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))  # a caller's bug
    assert not isinstance(err.value, UserError)
