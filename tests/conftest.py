"""Shared fixtures. Every test runs offline: no download is ever attempted."""

from __future__ import annotations

import os

import pytest

os.environ["RECONATTACK_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# Under pytest-xdist (`make test`: -n 2) the cores are shared out among the test processes, and
# among the processes they start: two processes of two threads each on two cores thrash (the
# suite took 15 min with -n 2 instead of 6.5 with one thread per process, 11 without xdist).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _THREADS = str(max(1, _CORES // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _THREADS


def pytest_configure(config):
    """The warnings a run never shows (reconattack.engine.console.HARMLESS_WARNINGS, each with why it is
    harmless) are not shown in the tests either: also where a test builds its own Trainer."""
    if _WORKERS > 1:
        import torch

        torch.set_num_threads(int(_THREADS))
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
