"""A build that fails on rank 0 stops the ranks waiting for it at once, with rank 0's message;
an earlier failure never fails a later build (reconattack/engine/artifacts.py)."""

import json
import subprocess
import sys
import threading
import time

import pytest

from reconattack.engine import artifacts
from reconattack.engine.artifacts import (
    ArtifactBuildError,
    ArtifactInputError,
    ArtifactStore,
    launch_id,
    marks_this_wait,
)
from reconattack.errors import ConfigError, UserError


class Waiter(threading.Thread):
    """Another rank asking the store for the artifact, in a thread."""

    def __init__(self, root, spec, rank=1, wait_s=60.0, what=None):
        super().__init__(daemon=True)
        self.store = ArtifactStore(root, rank=rank, wait_s=wait_s)
        self.spec, self.what, self.result, self.error, self.ended = spec, what, None, None, None

    def run(self):
        try:
            self.result = self.store.get("k", self.spec, lambda d: None, what=self.what)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        self.ended = time.monotonic()


def _failing(exc, delay=0.3):
    def build(d):
        time.sleep(delay)
        raise exc
    return build


def test_a_waiting_rank_stops_at_once_with_rank_zeros_error(tmp_path):
    spec = {"a": 1}
    waiter = Waiter(tmp_path, spec, what="gallery")
    waiter.start()
    with pytest.raises(RuntimeError, match="disk full"):
        ArtifactStore(tmp_path).get("k", spec, _failing(RuntimeError("disk full\n  on /scratch")), what="gallery")
    failed = time.monotonic()
    waiter.join(10)
    assert not waiter.is_alive(), "the waiting rank still polls after rank 0 failed"
    assert waiter.ended - failed < 2 * artifacts.POLL_S + 1.0
    final = ArtifactStore(tmp_path).path("k", spec)
    assert isinstance(waiter.error, ArtifactBuildError) and not isinstance(waiter.error, UserError)
    message = str(waiter.error)
    assert "\n" not in message and "rank 0" in message and str(final) in message
    assert message.startswith("gallery: ") and message.endswith("RuntimeError: disk full on /scratch")
    # a rank that asks only after rank 0 has failed stops at once too
    late = Waiter(tmp_path, spec, rank=2)
    late.run()
    assert isinstance(late.error, ArtifactBuildError) and "disk full" in str(late.error)


def test_rank_zeros_user_error_stays_a_user_error_on_the_other_ranks(tmp_path):
    waiter = Waiter(tmp_path, {"a": 2})
    waiter.start()
    with pytest.raises(ConfigError):
        ArtifactStore(tmp_path).get("k", {"a": 2}, _failing(ConfigError("threat.key_share must be in (0, 1]")))
    waiter.join(10)
    assert isinstance(waiter.error, ArtifactInputError) and isinstance(waiter.error, UserError)
    assert str(waiter.error).endswith("ConfigError: threat.key_share must be in (0, 1]")


def test_a_build_after_a_failure_is_waited_for_and_clears_the_marker(tmp_path):
    """The failed attempt's marker stays while rank 0 retries (the next request of the artifact);
    a rank waiting for the retry is not stopped by it and gets the artifact."""
    spec = {"a": 3}
    first = Waiter(tmp_path, spec)
    first.start()
    with pytest.raises(RuntimeError):
        ArtifactStore(tmp_path).get("k", spec, _failing(RuntimeError("transient")))
    first.join(10)
    assert isinstance(first.error, ArtifactBuildError)
    store = ArtifactStore(tmp_path)
    marks = store.failures_dir(store.path("k", spec))
    assert len(list(marks.glob("*.json"))) == 1

    retry = Waiter(tmp_path, spec)
    retry.start()
    time.sleep(2 * artifacts.POLL_S + 0.5)  # the waiter has seen the old marker and kept waiting
    assert retry.is_alive() and retry.error is None

    def build(d):
        (d / "x.txt").write_text("ok")
    path = store.get("k", spec, build)
    retry.join(10)
    assert retry.error is None and retry.result == path and (path / "x.txt").read_text() == "ok"
    assert not marks.exists()


STALE_RUN = """
import sys
from reconattack.engine.artifacts import ArtifactBuildError, ArtifactStore
try:
    ArtifactStore(sys.argv[1], rank=1, wait_s=1.5).get("k", {"a": 4}, lambda d: None)
except ArtifactBuildError as exc:
    print("STOPPED", exc)
except TimeoutError:
    print("WAITED")
"""


def test_a_marker_of_an_earlier_run_does_not_stop_a_new_one(tmp_path):
    """A rank of a run started after the failure (another process) waits for its own rank 0."""
    with pytest.raises(RuntimeError):
        ArtifactStore(tmp_path).get("k", {"a": 4}, _failing(RuntimeError("old failure"), delay=0))
    time.sleep(0.2)  # the process start time is known to 10 ms
    out = subprocess.run([sys.executable, "-c", STALE_RUN, str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "WAITED", out.stdout + out.stderr


def test_which_marker_is_the_waiters():
    """The rule of the module docstring: same attempt, same launch where both name one, written
    after the waiter's process started."""
    marker = {"attempt": 2, "launch": "slurm:7.0:0", "failed_at": 100.0}
    assert marks_this_wait(marker, attempt=2, launch="slurm:7.0:0", started=99.0)
    assert marks_this_wait(marker, attempt=2, launch=None, started=100.0)
    assert marks_this_wait({**marker, "launch": None}, attempt=2, launch="slurm:7.0:0", started=99.0)
    assert not marks_this_wait(marker, attempt=1, launch="slurm:7.0:0", started=99.0)  # an earlier job
    assert not marks_this_wait(marker, attempt=2, launch="slurm:8.0:0", started=99.0)  # another job
    assert not marks_this_wait(marker, attempt=2, launch="slurm:7.0:1", started=99.0)  # requeued
    assert not marks_this_wait(marker, attempt=2, launch=None, started=101.0)  # an earlier run


def test_launch_id_from_the_launcher(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_RESTART_COUNT",
                "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    assert launch_id() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert launch_id() == "torchrun:abc:0"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert launch_id() == "torchrun:abc:2"
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: not a multi-process launch of SLURM's
    assert launch_id() == "torchrun:abc:2"
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert launch_id() == "slurm:41.0:1"


def test_the_marker_records_rank_zeros_error(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ValueError):
        store.get("k", {"a": 5}, _failing(ValueError("bad value"), delay=0), what="key model")
    (path,) = store.failures_dir(store.path("k", {"a": 5})).glob("*.json")
    marker = json.loads(path.read_text())
    assert marker["type"] == "ValueError" and marker["message"] == "bad value"
    assert marker["what"] == "key model" and marker["artifact"] == str(store.path("k", {"a": 5}))
    assert marker["attempt"] == 1 and marker["user_error"] is False
