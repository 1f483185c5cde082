"""Files on disk: written all-or-nothing (a temporary file renamed into place), so a killed run leaves
no half file; safetensors and JSON read with a one-line error."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd


def read_safetensors(path: Path, error: type[Exception]) -> dict:
    """The tensors of a safetensors file (no pickle); an unreadable file is one line of `error`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as problem:
        raise error(f"{path}: not a readable safetensors file ({one_line(problem)})") from None


def read_json(path: Path, error: type[Exception], advice: str) -> dict:
    """The JSON object in `path`; missing, unreadable or not a JSON object is one line of `error` ending in `advice`."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: missing; {advice}")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as problem:
        raise error(f"{path}: unreadable (not valid JSON: {problem.msg} at line {problem.lineno} "
                    f"column {problem.colno}); {advice}") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{path}: unreadable ({one_line(problem)}); {advice}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: unreadable (a JSON {type(value).__name__}, not an object); {advice}")
    return value


def one_line(problem: BaseException) -> str:
    """`Type: first line of the message`: library errors can span many lines; ours are one."""
    text = str(problem).strip().splitlines()
    return f"{type(problem).__name__}: {text[0]}" if text else type(problem).__name__


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV so that readers never see a half-written file (temp file + rename)."""
    return write_atomic(Path(path), "w", lambda handle: df.to_csv(handle, index=False))


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write raw bytes all-or-nothing, the way `write_csv_atomic` writes tables."""
    return write_atomic(Path(path), "wb", lambda handle: handle.write(data))


def write_json_atomic(value: dict, path: str | os.PathLike) -> Path:
    """Indented JSON with sorted keys and numpy numbers as plain numbers, all-or-nothing."""
    text = json.dumps(value, indent=2, sort_keys=True, default=json_number) + "\n"
    return write_atomic(Path(path), "w", lambda handle: handle.write(text))


def json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


class WriteError(OSError):
    """A file could not be written (full disk, no permission): one line naming the file."""

    def __str__(self) -> str:
        return str(self.args[0])


def write_atomic(path: Path, mode: str, write: Callable[[IO], object]) -> Path:
    """Call `write(handle)` on a temporary file next to `path`, fsync it, then rename it onto `path`.

    A target that exists and is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO) is written
    in place, never replaced; a directory is refused."""
    try:
        if path.is_dir():
            raise WriteError(f"{path} is a directory; give a file name")
        if path.exists() and not path.is_file():
            with open(path, mode, **({"newline": ""} if "b" not in mode else {})) as handle:
                write(handle)
            return path
        return replace_atomically(path, mode, write)
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(f"{path}: cannot write ({error.strerror or error})") from None


def replace_atomically(path: Path, mode: str, write: Callable[[IO], object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode, **({"newline": ""} if "b" not in mode else {})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Plain text, all-or-nothing."""
    return write_atomic(Path(path), "w", lambda handle: handle.write(text))
