"""A run directory belongs to one process at a time and is either complete or clearly not.

`claim` takes an exclusive lock (`RUN/.lock`, naming its holder) for the lifetime of a fit, cv or
compare, and refuses a directory that already holds run files unless the user resumes or
overwrites it. `mark_complete` writes `complete.json` last: the sha256 of every file of the run,
so `check_complete` (called by `ProteinPredictor.load`) refuses an unfinished or altered run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from protadapt.files import read_json

LOCK = ".lock"
MARKER = "complete.json"
MARKER_FORMAT = 1
# what `fit` leaves behind before it is complete: a directory holding one of these is a run
RUN_SIGNS = (LOCK, "config.yaml", "checkpoints", "logs", "metrics.json", MARKER)


class RunInterrupted(BaseException):
    """SIGINT/SIGTERM during a fit; not a KeyboardInterrupt, which Lightning turns into exit 1."""


class RunDirError(RuntimeError):
    """A one-line problem with a run directory: in use, not empty, incomplete or altered."""


@contextlib.contextmanager
def claim(run_dir: Path, *, resume: bool = False, overwrite: bool = False, reuse: bool = False) -> Iterator[Path]:
    """Hold `run_dir` for this process; `reuse`: an existing directory is expected (compare's cells)."""
    if not is_rank_zero():  # DDP: the other ranks train inside rank 0's claim
        yield run_dir
        return
    created = first_missing(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = take_lock(run_dir)
    try:
        prepare(run_dir, resume=resume, overwrite=overwrite, reuse=reuse)
        write_holder(handle)
        yield run_dir
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK]:  # nothing was made: leave nothing
            handle.close()
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        handle.close()


def first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (removed again on failure)."""
    missing = None
    for candidate in [path, *path.absolute().parents]:
        if candidate.exists():
            return missing
        missing = candidate
    return missing


def take_lock(run_dir: Path):
    """An open lock file holding flock(LOCK_EX); another holder is a one-line error naming it."""
    path = run_dir / LOCK
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirError(f"{run_dir} is in use by {holder}; wait for it to finish or choose another --out") from None
    return handle


def write_holder(handle) -> None:
    """Who holds the lock, for the error a second process gets."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()


def prepare(run_dir: Path, *, resume: bool, overwrite: bool, reuse: bool) -> None:
    """Refuse a directory with run files unless resuming/reusing; `overwrite` empties it first."""
    others = [p for p in run_dir.iterdir() if p.name != LOCK]
    if overwrite:
        for path in others:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif others and not (resume or reuse):
        raise RunDirError(f"{run_dir} already holds a run ({others[0].name}, …); "
                          "continue it with --resume, replace it with --overwrite, or choose another --out")


def mark_complete(run_dir: Path) -> Path:
    """Write the completion marker last: sha256 of every top-level file of the run."""
    from protadapt.files import write_json_atomic

    files = {p.name: sha256(p) for p in sorted(run_dir.iterdir())
             if p.is_file() and not p.name.startswith(".") and p.name != MARKER}
    return write_json_atomic({"format": MARKER_FORMAT, "files": files}, run_dir / MARKER)


def check_complete(run_dir: Path) -> None:
    """A run made by `fit` must be complete and unaltered; a bare saved predictor is not checked."""
    if not any((run_dir / sign).exists() for sign in RUN_SIGNS):
        return
    marker = run_dir / MARKER
    if not marker.is_file():
        raise RunDirError(f"{run_dir}: incomplete run (no {MARKER}); finish it with `protadapt fit ... "
                          f"--out {run_dir} --resume`, or refit")
    manifest = read_json(marker, RunDirError, "refit the run (or --resume it)")
    try:
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError):
        raise RunDirError(f"{marker}: unreadable completion marker (no file list); refit the run (or --resume it)") from None
    if manifest.get("format") != MARKER_FORMAT:
        raise RunDirError(f"{marker}: made by another protadapt version (format {manifest.get('format')}); refit")
    for name, digest in files.items():
        path = run_dir / name
        if not path.is_file():
            raise RunDirError(f"{path}: missing from a complete run; refit (or --resume) the run")
        if sha256(path) != digest:
            raise RunDirError(f"{path}: changed since the run finished (sha256 differs from {MARKER}); "
                              "refit (or --resume) the run")


def is_complete(run_dir: Path) -> bool:
    """`check_complete` as a yes/no, for callers that redo an unfinished run (compare's cells)."""
    try:
        check_complete(run_dir)
    except RunDirError:
        return False
    return (run_dir / MARKER).is_file()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_rank_zero() -> bool:
    """Rank 0, or a single process; read from the launcher's environment before DDP starts."""
    return all(int(os.environ.get(name, 0) or 0) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def default_name(config) -> str:
    """`TASK-METHOD-seedN`; a custom task adds its train file's stem and a hash of its path and bytes."""
    data = config.data
    name = data.task
    if data.task == "custom" and data.train_file:
        path = Path(data.train_file).expanduser()
        digest = hashlib.sha256(str(path.resolve()).encode())
        if path.is_file():
            digest.update(sha256(path).encode())
        name = f"custom-{path.stem}-{digest.hexdigest()[:8]}"
    return f"{name}-{config.adapter.method}-seed{config.seed}"
