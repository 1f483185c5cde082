"""Reading a file for a trained run (`predict`, `evaluate`): the run's classes, columns and problem type."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd
import yaml

from protadapt.data.errors import DataError
from protadapt.data.io import read_sequences


def run_read_options(run_dir: str | os.PathLike, metadata: dict) -> dict:
    """read_sequences options for a file given to a trained run: its problem type, classes and columns.

    The column names come from the run's config.yaml (data.sequence_column, ...); a file that
    lacks the run's sequence column is read with the default names instead.
    """
    options = {"problem_type": metadata["problem_type"], "classes": metadata.get("labels") or None}
    config = Path(run_dir) / "config.yaml"
    data = (yaml.safe_load(config.read_text()) or {}).get("data", {}) if config.is_file() else {}
    columns = {key: data[key] for key in ("sequence_column", "label_column", "id_column") if data.get(key)}
    return options | columns


def read_for_run(path: str | os.PathLike, run_dir: str | os.PathLike, metadata: dict, **kwargs) -> pd.DataFrame:
    """`read_sequences` with `run_read_options`, falling back to default column names."""
    options = run_read_options(run_dir, metadata)
    try:
        return read_sequences(path, **options, **kwargs)
    except DataError as error:
        if "sequence_column" not in options or f"no column '{options['sequence_column']}'" not in str(error):
            raise without_fit_hints(error, options["problem_type"]) from None
    defaults = {key: value for key, value in options.items() if not key.endswith("_column")}
    try:
        return read_sequences(path, **defaults, **kwargs)
    except DataError as error:
        raise without_fit_hints(error, options["problem_type"]) from None


def without_fit_hints(error: DataError, problem_type: str) -> DataError:
    """predict/evaluate have no data.problem_type option: say what the run is instead."""
    text = re.sub(r"\s*\((pass )?data\.problem_type=[^)]*\)", f" (the run is a {problem_type} model)", str(error))
    return error if text == str(error) else DataError(text)


def undefined_as_null(metrics: dict, frame: pd.DataFrame) -> dict:
    """Metrics that are NaN (AUROC of a one-class file, ...) as JSON null, with a note saying why."""
    undefined = [key for key, value in metrics.items() if isinstance(value, float) and math.isnan(value)]
    if not undefined:
        return metrics
    one = "class" if frame.attrs.get("problem_type") == "classification" else "label value"
    reason = f"the file has only one {one}" if frame["label"].nunique() < 2 else "not defined for these predictions"
    return {**{key: None if key in undefined else value for key, value in metrics.items()},
            "undefined": f"{', '.join(undefined)}: {reason}"}
