"""Reading FASTA/CSV/TSV: what is accepted, how it is normalised, and one-line errors for the rest."""

import logging
import os

import numpy as np
import pandas as pd
import pytest

from protadapt.data.io import DataError, read_sequences
from protadapt.files import write_bytes_atomic, write_csv_atomic


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


# --- what is accepted ----------------------------------------------------------------------


def test_fasta_labels_in_both_header_forms(tmp_path):
    path = write(tmp_path, "pep.fasta", ">a label=1 some text\nACDE\nFG\n\n>b|label=0\nkkll\n>c desc label=1\nMMM\n>d label=0\nWW\n")
    df = read_sequences(path)
    assert df["id"].tolist() == ["a", "b", "c", "d"]
    assert df["sequence"].tolist() == ["ACDEFG", "KKLL", "MMM", "WW"]
    assert df["label"].tolist() == [1, 0, 1, 0]
    assert df["label"].dtype == np.int64
    assert df.attrs["problem_type"] == "classification"


def test_fasta_label_key_follows_label_column(tmp_path):
    path = write(tmp_path, "mic.fa", ">a mic=0.25\nKK\n>b mic=-1.5\nRR\n")
    df = read_sequences(path, label_column="mic")
    assert df["label"].tolist() == [0.25, -1.5]
    assert df.attrs["problem_type"] == "regression"


def test_fasta_without_labels_gives_nan_labels(tmp_path):
    df = read_sequences(write(tmp_path, "x.fasta", ">sp|P1|NAME OS=Homo sapiens\nMKV\n"))
    assert df["id"].tolist() == ["sp|P1|NAME"]
    assert df["label"].isna().all()
    assert df.attrs["problem_type"] is None


def test_leading_blank_lines_and_crlf_in_fasta(tmp_path):
    df = read_sequences(write(tmp_path, "x.fasta", "\n\r\n>a label=1\r\nAC\r\n>b label=0\r\nDE\r\n"))
    assert df["sequence"].tolist() == ["AC", "DE"]


def test_csv_normalises_case_and_whitespace_and_keeps_extras(tmp_path):
    content = "id,sequence,label,temp,note\np1, ac d e ,1,70.5,x\np2,KLLK,0,80,\np3,NA,1,60,y\n"
    df = read_sequences(write(tmp_path, "t.csv", content))
    assert df.columns.tolist() == ["id", "sequence", "label", "temp", "note"]
    assert df["sequence"].tolist() == ["ACDE", "KLLK", "NA"]  # the peptide NA is not a missing value
    assert df["temp"].dtype == np.float64
    assert df["note"].isna().tolist() == [False, True, False]


def test_tsv_and_generated_ids(tmp_path):
    df = read_sequences(write(tmp_path, "set.tsv", "sequence\tlabel\nAAA\t0.5\nCCC\t1.5\n"))
    assert df["id"].tolist() == ["set_0", "set_1"]
    assert df["label"].dtype == np.float64


def test_custom_column_names_and_clash_is_renamed(tmp_path):
    content = "name,seq,label,growth\na,MK,1,80\nb,KM,0,20\n"
    df = read_sequences(write(tmp_path, "t.csv", content), id_column="name", sequence_column="seq", label_column="growth")
    assert df["id"].tolist() == ["a", "b"]
    assert df["label"].tolist() == [1, 0]  # classes 20, 80 in sorted order
    assert df.attrs["classes"] == [20, 80]
    assert df["label_original"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["0", "1", "1", "0"], "classification"),
        (["0.0", "2.0", "2", "0"], "classification"),
        (["0.5", "1", "1", "0"], "regression"),
        ([str(i) for i in range(25)], "regression"),  # more than 20 distinct integers
    ],
)
def test_problem_type_inference(tmp_path, labels, expected):
    rows = "".join(f"s{i},{'ACDEFGHIKL'[i % 10] * (i + 1)},{label}\n" for i, label in enumerate(labels))
    df = read_sequences(write(tmp_path, "t.csv", "id,sequence,label\n" + rows))
    assert df.attrs["problem_type"] == expected


def test_explicit_regression_keeps_integer_labels_as_float(tmp_path):
    df = read_sequences(write(tmp_path, "t.csv", "sequence,label\nAA,1\nCC,0\n"), problem_type="regression")
    assert df["label"].dtype == np.float64


def test_extended_residues_accepted(tmp_path):
    df = read_sequences(write(tmp_path, "t.fasta", ">a\nACXBZUO\n"))
    assert df["sequence"].tolist() == ["ACXBZUO"]


def test_terminal_stop_removed_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        df = read_sequences(write(tmp_path, "t.fasta", ">a\nMKV*\n>b\nMKW\n"))
    assert df["sequence"].tolist() == ["MKV", "MKW"]
    assert "removed a terminal '*'" in caplog.text and "1 sequence" in caplog.text


def test_missing_labels_allowed_when_not_required(tmp_path):
    df = read_sequences(write(tmp_path, "t.csv", "sequence,label\nAA,1\nCC,\nDD,0\nEE,1\nFF,0\n"))
    assert df["label"].dtype == "Int64"
    assert df["label"].isna().tolist() == [False, True, False, False, False]


def test_truncate_warns_with_count(tmp_path, caplog):
    path = write(tmp_path, "t.fasta", ">a\n" + "A" * 12 + "\n>b\n" + "C" * 11 + "\n>c\nDD\n")
    with caplog.at_level(logging.WARNING):
        df = read_sequences(path, max_length=10, truncate=True)
    assert df["sequence"].str.len().tolist() == [10, 10, 2]
    assert "truncated 2 sequence(s)" in caplog.text


def test_conflicts_drop_every_copy_and_warns(tmp_path, caplog):
    content = "id,sequence,label\na,KK,1\nb,KK,0\nc,RR,1\nd,RR,1\ne,LL,0\nf,MM,0\ng,WW,1\n"
    with caplog.at_level(logging.WARNING):
        df = read_sequences(write(tmp_path, "t.csv", content), conflicts="drop")
    assert df["id"].tolist() == ["c", "d", "e", "f", "g"]
    assert "dropped 2 record(s) of 1 sequence(s)" in caplog.text
    assert "1 record(s) repeat an earlier record's sequence" in caplog.text


def test_write_csv_atomic_round_trip_leaves_no_temp_files(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "sequence": ["AC", "DE"], "label": [0, 1]})
    out = write_csv_atomic(frame, tmp_path / "sub" / "out.csv")
    assert pd.read_csv(out).equals(frame)
    assert os.listdir(tmp_path / "sub") == ["out.csv"]
    write_bytes_atomic(b"abc", tmp_path / "sub" / "raw.bin")
    assert (tmp_path / "sub" / "raw.bin").read_bytes() == b"abc"


def test_write_csv_atomic_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")

    class Exploding(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_csv_atomic(Exploding({"a": [1]}), target)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.csv"]


# --- what is refused: one line, naming file and record, nothing written --------------------

LONG = "A" * 30
MALFORMED = [
    # (case id, file name, content or None for missing, read kwargs, fragments the message must hold)
    ("missing-file", "absent.csv", None, {}, ["absent.csv", "no such file"]),
    ("empty-file", "e.csv", "", {}, ["e.csv", "file is empty"]),
    ("blank-file", "e.fasta", "\n  \n\n", {}, ["e.fasta", "file is empty"]),
    ("header-only", "h.csv", "id,sequence,label\n", {}, ["h.csv", "no records"]),
    ("text-before-header", "t.fasta", "hello\n>a\nAC\n", {}, ["t.fasta line 1", "before the first '>'"]),
    ("empty-sequence-fasta", "t.fasta", ">a\nAC\n>b\n>c\nDE\n", {}, ["t.fasta line 3 (id 'b')", "empty sequence"]),
    ("empty-sequence-csv", "t.csv", "id,sequence\na,AC\nb,\n", {}, ["t.csv line 3 (id 'b')", "empty sequence"]),
    ("bad-letter", "bbb.csv", "id,sequence,label\np1,AC,0\np2,AC,1\np3,AJC,0\n", {}, ["bbb.csv line 4 (id 'p3')", "character 'J' at position 2", "allowed: ACDEFGHIKLMNPQRSTVWY plus X B Z U O"]),
    ("digit", "t.fasta", ">a\nAC1D\n", {}, ["t.fasta line 1 (id 'a')", "character '1'"]),
    ("gap", "t.fasta", ">a\nAC\n>b\nA-C\n", {}, ["line 3 (id 'b')", "character '-'", "alignment gaps"]),
    ("inner-stop", "t.fasta", ">a\nAC*DE\n", {}, ["character '*' at position 3"]),
    ("many-bad", "t.fasta", ">a\nA1\n>b\nC2\n>c\nD3\n", {}, ["(id 'a')", "2 more records with the same problem"]),
    ("no-sequence-column", "t.csv", "id,seq\na,AC\n", {}, ["t.csv line 1", "no column 'sequence'", "columns: id, seq", "sequence_column="]),
    ("duplicate-id-csv", "t.csv", "id,sequence\na,AC\nb,DE\na,FG\n", {}, ["t.csv line 4 (id 'a')", "already used on line 2"]),
    ("duplicate-id-fasta", "t.fasta", ">a\nAC\n>a\nDE\n", {}, ["t.fasta line 3 (id 'a')", "already used on line 1"]),
    ("empty-id", "t.csv", "id,sequence\na,AC\n,DE\n", {}, ["t.csv line 3", "empty id"]),
    ("conflict", "bbb.csv", "id,sequence,label\nx,KK,0\np1,AGCK,1\ny,KK,0\np2,AGCK,0\n", {}, ["bbb.csv lines 3, 5 (ids 'p1', 'p2')", "different labels [0, 1]", "data.conflicts=drop"]),
    ("missing-label", "t.csv", "sequence,label\nAC,1\nDE,\nFG,0\n", {"require_labels": True}, ["t.csv line 3 (id 't_1')", "no label but labels are required"]),
    ("non-numeric-label", "t.csv", "sequence,label\nAC,1\nDE,yes\n", {"problem_type": "regression", "require_labels": True}, ["line 3", "label 'yes' is not a number"]),
    ("infinite-label", "t.csv", "sequence,label\nAC,1.5\nDE,inf\n", {"require_labels": True}, ["line 3", "label 'inf' is not finite"]),
    ("no-label-column", "t.csv", "id,sequence\na,AC\n", {"require_labels": True}, ["t.csv line 1", "no label column 'label'"]),
    ("no-fasta-labels", "t.fasta", ">a\nAC\n", {"require_labels": True}, ["t.fasta", "no header has a 'label=' tag", "'>id label=1'"]),
    ("single-example-class", "t.csv", "id,sequence,label\na,AC,0\nb,DE,0\nc,FG,1\n", {"require_labels": True}, ["t.csv line 4 (id 'c')", "class 1 has only 1 example(s)", "at least 2"]),
    ("fractional-class", "t.csv", "sequence,label\nAC,0.5\nDE,1\n", {"problem_type": "classification", "require_labels": True}, ["line 2", "label '0.5' is not a class", "data.problem_type=regression"]),
    ("unknown-class", "t.csv", "sequence,label\nAC,0\nDE,2\n", {"classes": [0, 1], "require_labels": True}, ["t.csv line 3 (id 't_1')", "label 2 is not one of the classes 0, 1"]),
    ("too-long", "t.fasta", f">a\nAC\n>b\n{LONG}\n", {"max_length": 20}, ["t.fasta line 3 (id 'b')", "30 residues, more than max_length=20", "data.truncate=true", "--truncate"]),
    ("not-utf8", "t.csv", b"sequence\n\xff\xfe\n", {}, ["t.csv", "not UTF-8"]),
    ("ragged-csv", "t.csv", "sequence,label\nAC,1\nDE,1,7\n", {}, ["t.csv line 3: 3 fields but the header has 2"]),
    ("ragged-first-row", "t.csv", "id,sequence,label\na,AC,0,\nb,DE,1\n", {}, ["t.csv line 2: 4 fields but the header has 3"]),
    ("ragged-after-blank-and-quoted", "t.csv", 'id,sequence,note\n\na,AC,"two\nlines"\n\nb,DE\n', {}, ["t.csv line 6: 2 fields but the header has 3"]),
    ("ragged-tsv-short", "t.tsv", "id\tsequence\tlabel\na\tAC\t0\nb\tDE\n", {}, ["t.tsv line 3: 2 fields but the header has 3"]),
    ("duplicate-id-hint", "t.csv", "id,sequence\na,AC\na,DE\n", {}, ["t.csv line 3 (id 'a')", "data.duplicate_ids=suffix"]),
    ("bad-duplicate-policy", "t.csv", "id,sequence\na,AC\n", {"duplicate_ids": "keep"}, ["data.duplicate_ids=keep is not a choice", "error, suffix"]),
    ("directory", "folder", "DIR", {}, ["folder", "is a directory"]),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "fragments"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_input_is_one_line_error_and_nothing_written(tmp_path, name, content, kwargs, fragments):
    source_dir, out_dir = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir()
    out_dir.mkdir()
    source = source_dir / name
    if content == "DIR":
        source.mkdir()
    elif content is not None:
        write(source_dir, name, content)
    out = out_dir / "converted.csv"
    with pytest.raises(DataError) as caught:
        write_csv_atomic(read_sequences(source, **kwargs), out)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert os.listdir(out_dir) == []


def test_single_example_class_allowed_for_evaluation_files(tmp_path):
    path = write(tmp_path, "test.csv", "sequence,label\nAC,0\nDE,0\nFG,1\n")
    assert len(read_sequences(path)) == 3
    assert len(read_sequences(path, require_labels=True, min_class_count=1)) == 3


def test_bad_arguments_are_value_errors(tmp_path):
    path = write(tmp_path, "t.fasta", ">a\nAC\n")
    with pytest.raises(ValueError, match="problem_type"):
        read_sequences(path, problem_type="ranking")
    with pytest.raises(ValueError, match="conflicts"):
        read_sequences(path, conflicts="mean")
