"""Atomic writes: a write that dies half-way leaves the previous version whole."""

import json
import subprocess
import sys
import textwrap

import pytest

from reconattack.engine.context import write_metrics
from reconattack.utils import files
from reconattack.utils.files import atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_bytes(path, b"previous")

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. SIGINT between writing and renaming

    monkeypatch.setattr(files.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new" * 1000)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # the temporary is removed


def test_killed_writer_leaves_previous_metrics(tmp_path):
    """A process SIGKILLed while writing metrics.json (here: inside the write) leaves the old file."""
    write_metrics({"test/psnr": 1.0}, tmp_path)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from reconattack.utils import files
        def kill_mid_write(fd):
            os.kill(os.getpid(), signal.SIGKILL)
        files.os.fsync = kill_mid_write
        from reconattack.engine.context import write_metrics
        write_metrics({{"test/psnr": 2.0, "test/ssim": 0.5}}, Path({str(tmp_path)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test/psnr": 1.0}
    # the killed writer's temporary may remain beside it, never under the real name
    assert all(p.name.startswith(".metrics.json.") for p in tmp_path.iterdir() if p.name != "metrics.json")


def test_a_cache_write_skips_the_fsync_but_stays_atomic(tmp_path, monkeypatch):
    def no_fsync(fd):
        raise AssertionError("fsync on the hot path")

    monkeypatch.setattr(files.os, "fsync", no_fsync)
    path = atomic_write_bytes(tmp_path / "entry.sift", b"data", durable=False)
    assert path.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == ["entry.sift"]
