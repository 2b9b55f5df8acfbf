"""Shared fixtures. Every test runs offline: no download is ever attempted."""

from __future__ import annotations

import os

import pytest

os.environ["RECONATTACK_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def pytest_configure(config):
    """The warnings a run never shows (reconattack.engine.console.HARMLESS_WARNINGS, each with why it is
    harmless) are not shown in the tests either: also where a test builds its own Trainer."""
    from reconattack.engine.console import pytest_filters

    for line in pytest_filters():
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory):
    """No network, and a private empty torch hub cache, for every test."""
    monkeypatch.setenv("RECONATTACK_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    import socket

    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    real_connect = socket.socket.connect

    def _connect(self, address, *args, **kwargs):  # local (AF_UNIX) sockets stay usable
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address, *args, **kwargs)
        return _no_network()

    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _connect)
