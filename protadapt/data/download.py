"""Fetch a task's published raw files, check each one's sha256 before use, and convert them.

Every file is pinned by the digest of the bytes that are downloaded (the raw file itself, not a
converted form). A file whose digest is unknown is used with a logged "not verified" warning; a
file whose digest differs is refused and nothing is written.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from protadapt.data.io import DataError
from protadapt.files import write_bytes_atomic, write_csv_atomic

if TYPE_CHECKING:
    from protadapt.data.tasks import Task

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "PROTADAPT_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 60


def download(task: "Task", path: Path) -> Path:
    """Fetch the task's raw files (sha256-checked) into ``path.parent/raw`` and write ``path``."""
    if task.convert is None:
        raise DataError(
            f"{task.name}: {path} not found and this task has no automatic download; set "
            f"{DATA_DIR_ENV} to a folder holding {task.name}/{task.file_name} (raw files: {task.source})"
        )
    raw_dir = path.parent / "raw"
    for raw in task.raw_files:
        target = raw_dir / raw.name
        if target.is_file() and raw.sha256 and sha256(target.read_bytes()) == raw.sha256:
            continue
        if target.is_file() and raw.sha256:
            logger.warning("%s: %s does not match its sha256; downloading it again", task.name, target)
        logger.info("%s: downloading %s", task.name, raw.url)
        data = fetch_url(raw.url, task, path)
        check_sha256(data, raw.sha256, f"{task.name}: {raw.url}")
        write_bytes_atomic(data, target)
    write_csv_atomic(task.convert(raw_dir), path)
    logger.info("%s: wrote %s", task.name, path)
    return path


def check_sha256(data: bytes, expected: str | None, what: str) -> None:
    """Raise a one-line DataError unless ``data`` has the pinned digest; log when none is pinned."""
    if not expected:
        logger.warning("%s: sha256 not verified (no digest is pinned for it)", what)
        return
    actual = sha256(data)
    if actual != expected:
        raise DataError(
            f"{what} has sha256 {actual[:16]}..., expected {expected[:16]}...; the source changed, so "
            f"nothing was written; set {DATA_DIR_ENV} to a checked copy"
        )
    logger.info("%s: sha256 verified", what)


def fetch_url(url: str, task: "Task", path: Path) -> bytes:
    """The bytes at ``url``; the single place that touches the network (tests replace it)."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"{task.name}: {path} not found and downloading {url} failed ({reason}); if offline, set "
            f"{DATA_DIR_ENV} to a folder holding {task.name}/{task.file_name}"
        ) from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
