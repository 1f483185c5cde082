"""The data layer's error: one line that names the file and record, and says what to do."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with input data, described in one line that names the file and record."""

    def __init__(self, message: str):
        super().__init__(message.replace("\r", " ").replace("\n", " "))
