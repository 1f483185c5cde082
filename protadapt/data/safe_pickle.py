"""Read published pickles without running pickle code: no class or function in them is ever called.

`load_plain` refuses every global, so only dicts/lists/str/numbers come back. `load_frame` reads an
old pandas DataFrame pickle: each global it names (from a short allow-list of numpy/pandas names)
is replaced by an inert record of its arguments and state, and the DataFrame is rebuilt from those
records with numpy buffers and `pd.DataFrame` — nothing from numpy or pandas is unpickled.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pandas as pd

from protadapt.data.errors import DataError

# the exact globals an old (pandas 0.14-0.24, Python 2) DataFrame pickle names; anything else is refused
FRAME_GLOBALS = frozenset({
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("pandas.core.frame", "DataFrame"), ("pandas.core.internals", "BlockManager"),
    ("pandas.core.indexes.base", "Index"), ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.numeric", "Int64Index"), ("pandas.core.indexes.range", "RangeIndex"),
    ("__builtin__", "slice"), ("builtins", "slice"),
})


def load_plain(data: bytes, name: str) -> Any:
    """Unpickle containers of str/bytes/numbers only; any class or function is a one-line error."""
    return _load(data, name, frozenset())


def load_frame(data: bytes, name: str) -> pd.DataFrame:
    """Rebuild a pickled pandas DataFrame (old BlockManager layout) from its raw state."""
    record = _load(data, name, FRAME_GLOBALS)
    try:
        return _frame(record)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as error:
        raise DataError(f"{name}: not a DataFrame pickle this reader knows ({error}); "
                        "check the file against its published sha256") from None


class Record:
    """What a pickled global becomes: its name, the arguments it was called with, and its state."""

    qualname = ""

    def __new__(cls, *args: Any) -> "Record":
        record = object.__new__(cls)
        record.args, record.state = args, None
        return record

    def __init__(self, *args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, name: str, allowed: frozenset):
        super().__init__(file, encoding="latin1")  # Python 2 str holds numpy's raw bytes
        self.name, self.allowed = name, allowed

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.allowed:
            raise DataError(f"{self.name}: the pickle asks for {module}.{name}, which this reader refuses "
                            "(it runs no pickle code); use the published file with its sha256")
        return type(name, (Record,), {"qualname": f"{module}.{name}"})


def _load(data: bytes, name: str, allowed: frozenset) -> Any:
    """Unpickle with one-line errors for refused globals and for truncated or malformed data."""
    try:
        return _Unpickler(io.BytesIO(data), name, allowed).load()
    except DataError:
        raise
    except Exception as error:  # pickle raises many types for damaged input
        raise DataError(f"{name}: not a readable pickle ({type(error).__name__}: {error}); download it again") from None


def _frame(record: Record) -> pd.DataFrame:
    """DataFrame record → frame: columns and index from the axes, values from each block."""
    manager = record.state["_data"]
    layout = next(iter(manager.state[3].values()))  # {"0.14.1": {"axes": [...], "blocks": [...]}}
    columns, index = (_index(axis) for axis in layout["axes"])
    values: dict[int, np.ndarray] = {}
    for block in layout["blocks"]:
        array = _array(block["values"])
        locations = range(len(columns))[slice(*block["mgr_locs"].args)]
        for row, location in zip(array, locations):
            values[location] = row
    return pd.DataFrame({columns[i]: values[i] for i in range(len(columns))}, index=index)


def _index(record: Record) -> list:
    """A `_new_Index(cls, {"data": array, ...})` record → its values as a list."""
    kind, attributes = record.args
    if kind.qualname.endswith("RangeIndex"):
        return list(range(attributes.get("start", 0), attributes["stop"], attributes.get("step", 1)))
    return _array(attributes["data"]).tolist()


def _array(record: Record) -> np.ndarray:
    """An ndarray record (`_reconstruct` + BUILD state) → a numpy array made from its buffer."""
    _version, shape, dtype_record, fortran, raw = record.state
    dtype = _dtype(dtype_record)
    if dtype.kind == "O":
        flat = np.empty(len(raw), dtype=object)
        flat[:] = raw
    else:
        buffer = raw.encode("latin1") if isinstance(raw, str) else bytes(raw)
        flat = np.frombuffer(buffer, dtype=dtype).copy()
    return flat.reshape(shape, order="F" if fortran else "C")


def _dtype(record: Record) -> np.dtype:
    """A `dtype('f8', 0, 1)` record with state (version, byte order, ...) → np.dtype."""
    code = record.args[0]
    byte_order = record.state[1] if record.state else "|"
    if code.startswith("O"):
        return np.dtype(object)
    return np.dtype(code).newbyteorder("<" if byte_order in ("<", "|", "=") else ">")
