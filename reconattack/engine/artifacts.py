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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: bump when an artifact builder changes what it writes for the same spec
VERSION = 1
DONE = "DONE"


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
        if (final / DONE).is_file():
            log.info("%s: reusing %s", what, final)
            return final
        if self.rank != 0:
            return self._wait(final, what)
        (final.parent / ".locks").mkdir(parents=True, exist_ok=True)
        with _locked(final.parent / ".locks" / f"{final.name}.lock"):
            if (final / DONE).is_file():  # built by a concurrent job while we waited
                log.info("%s: reusing %s (built by another job)", what, final)
                return final
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
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.built.append(f"{kind}/{final.name}")
        return final

    def _wait(self, final: Path, what: str) -> Path:
        start = time.monotonic()
        while not (final / DONE).is_file():
            if time.monotonic() - start > self.wait_s:
                raise TimeoutError(f"{what}: rank {self.rank} waited {self.wait_s:.0f} s for rank 0 "
                                   f"to build {final}")
            time.sleep(1.0)
        return final


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
