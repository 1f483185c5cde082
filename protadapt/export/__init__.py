"""`protadapt export`: a trained run as files other tools load — a PEFT adapter, a merged HF model, ONNX.

Every format writes into a temporary directory beside `OUT_DIR` and renames it into place, so an
interrupted export leaves no half directory. What a format cannot carry exactly is refused with one
line naming why (see README, *Exporting a run*).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from protadapt.export.checks import ExportError, check_exportable
from protadapt.export.head import write_readme
from protadapt.export.hf import base_model_name
from protadapt.model import ProteinPredictor


def export_run(run_dir: str | Path, out_dir: str | Path, fmt: str, overwrite: bool = False) -> Path:
    """Write run `run_dir` as `fmt` (peft | merged | onnx) into `out_dir`; returns `out_dir`."""
    writer = writers().get(fmt)
    if writer is None:
        raise ExportError(f"unknown export format '{fmt}'; choose one of: {', '.join(writers())}")
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)
    predictor, metadata = ProteinPredictor.load(run_dir)
    check_exportable(predictor, fmt, Path(run_dir))

    def write(directory: Path) -> None:
        summary = writer(predictor, metadata, directory)
        write_readme(directory, fmt, out_dir.resolve(), base_model_name(predictor.backbone), summary)

    return write_directory(out_dir, write)


def writers() -> dict[str, Callable]:
    """Format name → `writer(predictor, metadata, directory)` returning the README's summary line."""
    from protadapt.export.merged import write_merged
    from protadapt.export.onnx import write_onnx
    from protadapt.export.peft import write_peft

    return {"peft": write_peft, "merged": write_merged, "onnx": write_onnx}


def check_destination(out_dir: Path, overwrite: bool) -> None:
    """`out_dir` must not exist, be an empty directory, or be replaced by explicit `--overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a directory; choose another -o")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir}: exists and is not empty; choose another -o or pass --overwrite")


def write_directory(out_dir: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a fresh directory beside `out_dir`, then rename it onto `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        write(temporary)
        os.chmod(temporary, 0o755)
        if out_dir.is_dir() and any(out_dir.iterdir()):  # --overwrite: move the old one aside first
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
            os.replace(out_dir, old)
            os.replace(temporary, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(temporary, out_dir)  # onto a missing or empty directory
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


__all__ = ["ExportError", "export_run", "writers"]
