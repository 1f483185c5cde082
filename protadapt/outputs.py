"""Where `predict` / `evaluate` write: never over one of their inputs, a directory means a file in it,
and a destination that cannot be written is refused before any inference runs."""

from __future__ import annotations

import os
from pathlib import Path


class OutputError(ValueError):
    """A one-line problem with an output path."""


def output_path(output: str | None, input_file: str | Path, suffix: str, protected: tuple = ()) -> Path:
    """The file to write: `-o FILE`, or INPUT_STEM+suffix in `-o DIR/` (or here); checked up front."""
    stem = Path(input_file).stem
    if output is None:
        path = Path(f"{stem}{suffix}")
    elif output.endswith(("/", os.sep)) or Path(output).is_dir():
        path = Path(output) / f"{stem}{suffix}"
    else:
        path = Path(output)
    check_writable(path, (input_file, *protected))
    return path


def check_writable(path: Path, inputs: tuple) -> None:
    """Refuse an output that is one of the inputs (also through a link) or whose folder is missing."""
    for source in inputs:
        if same_file(path, Path(source)):
            raise OutputError(f"{path} is the input {source}; write the output to another file (-o)")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {parent} does not exist; create it or choose another -o")
    if not os.access(parent, os.W_OK) and not (path.exists() and os.access(path, os.W_OK)):
        raise OutputError(f"{path}: folder {parent} is not writable; choose another -o")


def same_file(a: Path, b: Path) -> bool:
    """The same file: same path, a symbolic or hard link (same device and inode)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
