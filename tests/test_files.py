"""read_json: every way a JSON file can be wrong is one line of the caller's error class, naming the file."""

from __future__ import annotations

import pytest

from protadapt.files import read_json

ADVICE = "refit the run"


class CallerError(ValueError):
    pass


def test_a_json_object_is_returned(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"task": "bbb", "labels": [0, 1]}')
    assert read_json(path, CallerError, ADVICE) == {"task": "bbb", "labels": [0, 1]}


@pytest.mark.parametrize("content, expected", [
    (None, "run.json: missing; refit the run"),
    ('{"task": "bbb",', "run.json: unreadable (not valid JSON: Expecting property name enclosed in double quotes "
                        "at line 1 column 16); refit the run"),
    ("", "run.json: unreadable (not valid JSON: Expecting value at line 1 column 1); refit the run"),
    ("[1, 2]", "run.json: unreadable (a JSON list, not an object); refit the run"),
    (b"\xff\xfe{}", "run.json: unreadable (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff"),
    ("directory", "run.json: unreadable (IsADirectoryError: "),
])
def test_each_fault_is_one_line_of_the_callers_error(tmp_path, content, expected):
    path = tmp_path / "run.json"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(CallerError) as caught:
        read_json(path, CallerError, ADVICE)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/{expected}")
    assert message.endswith(ADVICE) and "\n" not in message
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)  # no chained traceback
