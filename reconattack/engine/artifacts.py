"""Content-addressed artifacts shared between runs (trained demo models, key models, encrypted
galleries).

An artifact is a directory ``<root>/<kind>/<key>/`` where ``key`` is a hash of the *spec*: the
part of the resolved config that determines the artifact's content (plus :data:`VERSION`, bumped
when the code that builds an artifact changes its output), and of what builds it besides the config
(the store's ``built_with``: the device kind, the precision and the torch version of the run, so
that a gallery encrypted on a GPU in mixed precision is not taken for one made on a CPU in fp32;
runs of the same kind share it, a demo on CPU and a paper run on GPUs never do). A Hydra sweep over settings outside
the spec (``attack.key_share``, ``seed``, attacker settings) therefore finds the artifact built by
its first job and reuses it; changing anything inside the spec builds a new one.

Building is guarded so that concurrent jobs (a SLURM array, a joblib launcher) build each artifact
once: the builder holds an exclusive ``flock`` on ``<kind>/.locks/<key>.lock``, builds into a temporary
directory, writes ``spec.json`` and renames it into place; a waiting job then finds it complete.
A build that was killed leaves no artifact; what its builder kept in the artifact's work folder
(:meth:`ArtifactStore.work_dir`, e.g. the encrypted gallery's finished chunks) lets the next build
continue instead of starting over.
Under multi-process training only the rank-0 process builds; the other ranks wait for the
``DONE`` marker (see :func:`reconattack.engine.context.process_rank`).

A build that fails on rank 0 is marked before the exception goes on: rank 0 writes
``<kind>/.<key>.failed/<token>.json`` (atomically: the exception's type and one-line message,
when, on which host and process, its launch and attempt), and a waiting rank, which looks for it
at every poll, raises :class:`ArtifactBuildError` at once with rank 0's message instead of
polling until ``wait_s`` (12 hours by default) has passed. A marker is rank 0's *for this
waiter* only when all of these hold (:func:`marks_this_wait`), so that an earlier failure never
fails a later build that may succeed:

- the same attempt: it is the n-th request of that artifact by its process, as the waiter's
  is of its own (every rank runs the same program, so rank 0's n-th request is the waiter's
  n-th; a sweep of several jobs in one process does not take job 1's failure for job 2's);
- the same launch, where the launcher names one (:func:`launch_id`: SLURM's job, step and
  restart count; torchrun's run id and restart count): a concurrent job of a sweep that fails
  the same artifact (whose rank 0 may yet build it) is not the waiter's rank 0;
- written after the waiter's process started: a marker left by a failed earlier run is older
  than every process of a new one (the ranks of one launch start within moments of each other,
  and rank 0 cannot fail a build before it has imported torch and composed its config).

Markers are kept until the artifact is published (a waiter of the failed launch that is still
polling then finds the artifact) and are never read as a reason to skip a build: rank 0 builds
whatever markers there are.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reconattack.errors import UserError
from reconattack.utils.files import atomic_write_text

log = logging.getLogger(__name__)

#: bump when an artifact builder changes what it writes for the same spec
VERSION = 1
DONE = "DONE"
#: seconds between a waiting rank's looks for the artifact or rank 0's failure marker
POLL_S = 1.0


class ArtifactBuildError(RuntimeError):
    """Rank 0 failed to build an artifact that this rank waits for; the message is rank 0's."""


class ArtifactInputError(ArtifactBuildError, UserError):
    """Rank 0's build failed with a :class:`~reconattack.errors.UserError` (bad input): the other
    ranks stop with it as a user error too (one line, exit status 2)."""


def launch_id() -> str | None:
    """What every process of one launch shares and the next launch does not, from the
    launcher's environment, or None where the launcher names none (a single process,
    Lightning's own DDP launcher): ``slurm:<job>.<step>:<restart count>`` (a requeued job is
    another launch), ``torchrun:<run id>:<restart count>`` (torchrun's run id is ``none`` unless
    ``--rdzv-id`` or ``--standalone`` is given: then only the marker's time tells one launch from
    the next)."""
    env = os.environ
    tasks = env.get("SLURM_NTASKS", "1").strip()
    if env.get("SLURM_JOB_ID") and tasks.isdigit() and int(tasks) > 1:
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '')}:{env.get('SLURM_RESTART_COUNT', '0')}"
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}:{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return None


def _process_start() -> float:
    """When this process started (seconds since the epoch, to 10 ms: Linux ``/proc``'s start
    time and uptime, both since boot), else when this module was imported."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()
#: requests per (rank, artifact) in this process: the attempt a failure marker belongs to
_REQUESTS: Counter = Counter()
_REQUESTS_LOCK = threading.Lock()


def _next_attempt(rank: int, final: Path) -> int:
    with _REQUESTS_LOCK:
        _REQUESTS[rank, str(final)] += 1
        return _REQUESTS[rank, str(final)]


def marks_this_wait(marker: Mapping[str, Any], attempt: int, launch: str | None, started: float) -> bool:
    """Whether a failure marker is the failure of the build this waiter waits for (module
    docstring): the same ``attempt``, the same ``launch`` where both name one, and written at or
    after ``started`` (the waiter's process start)."""
    if marker.get("attempt") != attempt:
        return False
    if launch is not None and marker.get("launch") is not None and marker["launch"] != launch:
        return False
    return float(marker.get("failed_at", 0.0)) >= started


def spec_key(kind: str, spec: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over ``kind``, :data:`VERSION` and the canonical JSON of ``spec``."""
    blob = json.dumps({"kind": kind, "version": VERSION, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ArtifactStore:
    """Artifacts under ``root`` (``paths.cache_dir/artifacts``).

    Args:
        root: directory of the store.
        reuse: False builds every artifact afresh in ``private_root`` (the run directory), e.g. to
            measure what the sharing saves; nothing is shared then.
        private_root: where artifacts go when ``reuse`` is False.
        rank: process rank; only rank 0 builds, the others wait (``wait_s`` seconds at most).
        built_with: what builds the artifacts besides their spec (:func:`reconattack.engine.
            context.built_with`), part of every key.
    """

    def __init__(self, root: str | os.PathLike, reuse: bool = True,
                 private_root: str | os.PathLike | None = None, rank: int = 0,
                 wait_s: float = 12 * 3600.0, built_with: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.built_with = dict(built_with or {})
        self.reuse = bool(reuse)
        self.private_root = Path(private_root) if private_root is not None else self.root
        self.rank = int(rank)
        self.wait_s = float(wait_s)
        self.built: list[str] = []  # "<kind>/<key>" built by this process (for tests and logs)

    def _keyed(self, spec: Mapping[str, Any]) -> Mapping[str, Any]:
        """The spec with what builds the artifact (``built_with``), as it is hashed and recorded."""
        return {**spec, "built_with": self.built_with} if self.built_with else spec

    def path(self, kind: str, spec: Mapping[str, Any]) -> Path:
        base = self.root if self.reuse else self.private_root
        return base / kind / spec_key(kind, self._keyed(spec))

    @staticmethod
    def failures_dir(final: Path) -> Path:
        """Where rank 0 marks its failed builds of the artifact ``final``
        (``<kind>/.<key>.failed``, one JSON file per failed attempt)."""
        return final.parent / f".{final.name}.failed"

    def work_dir(self, kind: str, spec: Mapping[str, Any]) -> Path:
        """A folder that survives a killed build of the artifact (``<kind>/.<key>.work``): a
        builder keeps finished pieces there and continues from them; it is removed when the
        artifact is published. Only the builder holding the artifact's lock uses it."""
        final = self.path(kind, spec)
        return final.parent / f".{final.name}.work"

    def get(self, kind: str, spec: Mapping[str, Any], build: Callable[[Path], None],
            what: str | None = None) -> Path:
        """The artifact's directory, built by ``build(tmp_dir)`` unless it already exists.

        ``build`` writes its files into the directory it is given; when it returns, the directory
        is published atomically. An exception leaves no artifact behind.
        """
        final = self.path(kind, spec)
        what = what or kind
        attempt = _next_attempt(self.rank, final)
        if (final / DONE).is_file():
            log.info("%s: reusing %s", what, final)
            return final
        if self.rank != 0:
            return self._wait(final, what, attempt)
        try:
            built = self._build(kind, spec, final, build, what)
        except BaseException as exc:
            self._mark_failed(final, what, attempt, exc)
            raise
        if built:
            self.built.append(f"{kind}/{final.name}")
        return final

    def _build(self, kind: str, spec: Mapping[str, Any], final: Path, build: Callable[[Path], None],
               what: str) -> bool:
        """Rank 0: build and publish ``final`` under its lock; False when a concurrent job
        published it first."""
        (final.parent / ".locks").mkdir(parents=True, exist_ok=True)
        with _locked(final.parent / ".locks" / f"{final.name}.lock"):
            if (final / DONE).is_file():  # built by a concurrent job while we waited
                log.info("%s: reusing %s (built by another job)", what, final)
                return False
            for stale in final.parent.glob(f".{final.name}.tmp*"):  # left by a killed build
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".{final.name}.tmp{os.getpid()}"
            tmp.mkdir(parents=True)
            work = self.work_dir(kind, spec)
            work.mkdir(parents=True, exist_ok=True)
            try:
                log.info("%s: building %s", what, final)
                build(tmp)
                (tmp / "spec.json").write_text(
                    json.dumps({"kind": kind, "version": VERSION, "spec": self._keyed(spec)}, indent=2,
                               sort_keys=True, default=str))
                (tmp / DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
                shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover
                os.replace(tmp, final)
                shutil.rmtree(work, ignore_errors=True)
                shutil.rmtree(self.failures_dir(final), ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return True

    def _mark_failed(self, final: Path, what: str, attempt: int, exc: BaseException) -> None:
        """Record rank 0's failed build for the waiting ranks (module docstring); a marker that
        cannot be written is logged, never raised over the build's own exception."""
        launch = launch_id()
        marker = {"artifact": str(final), "what": what, "type": type(exc).__name__,
                  "user_error": isinstance(exc, UserError),
                  "message": " ".join(str(exc).split())[:2000], "attempt": attempt, "launch": launch,
                  "failed_at": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        token = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{launch or 'local'}-{marker['host']}-{os.getpid()}-{attempt}")
        try:
            atomic_write_text(self.failures_dir(final) / f"{token}.json", json.dumps(marker, indent=1))
        except OSError as err:
            log.warning("%s: could not mark the failed build for the other ranks (%s)", what, err)

    def _rank_zero_failure(self, final: Path, attempt: int, launch: str | None,
                           started: float) -> dict | None:
        """Rank 0's failure marker of the build this rank waits for, or None."""
        folder = self.failures_dir(final)
        if not folder.is_dir():
            return None
        for path in sorted(folder.glob("*.json")):
            try:
                marker = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed while listed (the artifact was published)
            if isinstance(marker, dict) and marks_this_wait(marker, attempt, launch, started):
                return marker
        return None

    def _wait(self, final: Path, what: str, attempt: int) -> Path:
        start, launch, started = time.monotonic(), launch_id(), _process_start()
        while not (final / DONE).is_file():
            failed = self._rank_zero_failure(final, attempt, launch, started)
            if failed is not None:
                error = ArtifactInputError if failed.get("user_error") else ArtifactBuildError
                raise error(f"{what}: rank 0 failed to build {final} (rank {self.rank} waited for it): "
                            f"{failed.get('type', 'Exception')}: {failed.get('message', '')}")
            if time.monotonic() - start > self.wait_s:
                raise TimeoutError(f"{what}: rank {self.rank} waited {self.wait_s:.0f} s for rank 0 "
                                   f"to build {final}")
            time.sleep(POLL_S)
        return final


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
