"""Bad input of every kind: each case exits non-zero with ONE stderr line `protadapt: error: ...`,
no traceback, and leaves every file that existed before byte-for-byte as it was (and adds none).

One tiny run is trained once for the module (`run`) and copied where a case alters it. Commands run
in-process through `protadapt.cli.main`, in the case's own directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

import protadapt.training.run as run_module
from protadapt.cli import main

SEQ = "MKTAYIAKQRQISFVKSHFSRQ"
GOOD_CSV = "id,sequence,label\n" + "".join(f"s{i},{SEQ[: 10 + i]},{i % 2}\n" for i in range(12))
GOOD_FASTA = "".join(f">s{i}\n{SEQ[: 10 + i]}\n" for i in range(6))
TINY = ["--backbone", "tiny", "--quiet", "optim.max_epochs=1", "data.batch_size=16"]

# ------------------------------------------------------------------ bad table / FASTA content
CONTENTS = {
    "empty.csv": b"",
    "header_only.csv": b"id,sequence,label\n",
    "bom_header_only.csv": b"\xef\xbb\xbfid,sequence,label\n",
    "latin1.csv": "id,sequence,label\ns1,MKT\xe9A,1\n".encode("latin-1"),
    "utf16.csv": "id,sequence,label\ns1,MKTA,1\n".encode("utf-16"),
    "binary.csv": bytes(range(256)) * 4,
    "nul.csv": b"id,sequence,label\ns1,MK\x00TA,1\n",
    "ragged.csv": b"id,sequence,label\ns1,MKTA,1\ns2,MKTA,1,extra,more\n",
    "gaps.csv": b"id,sequence,label\ns1,MK-TA,1\n",
    "digits.csv": b"id,sequence,label\ns1,MK3TA,1\n",
    "stars.csv": b"id,sequence,label\ns1,MKT*A*,1\n",
    "unclosed_quote.csv": b'id,sequence,label\ns1,"MKTA,1\ns2,MKTAA,0\n',
    "empty_sequence.csv": b"id,sequence,label\ns1,,1\ns2,MKTA,0\n",
    "no_sequence_column.csv": b"id,seq,label\ns1,MKTA,1\n",
    "huge_line.csv": b"id,sequence,label\ns1," + b"A" * 200_000 + b",1\n",
    "duplicate_ids.csv": b"id,sequence,label\ns1,MKTA,1\ns1,MKTAA,0\n",
    "semicolons.csv": b"id;sequence;label\ns1;MKTA;1\n",
    "tsv_as_csv.tsv": b"id,sequence,label\ns1,MKTA,1\n",
    "empty.tsv": b"",
    "unknown.xlsx": b"PK\x03\x04 not a table",
    "gzip_bytes.csv": b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
    "empty.fasta": b"",
    "header_only.fasta": b">only\n",
    "no_header.fasta": b"MKTAYIAKQ\n",
    "bad_residue.fasta": b">a\nMKTA\n>b\nMKJ1Z\n",
    "gap.fasta": b">a\nMK--TA\n",
    "duplicate.fasta": b">a\nMKTA\n>a\nMKTAA\n",
    "empty_record.fasta": b">a\n>b\nMKTA\n",
    "binary.fasta": b">a\n\x00\x01\x02\xff\n",
    "huge.fasta": b">a\n" + b"M" * 200_000 + b"\n",
}
CONTENT_CASES = [(f"{command}-{name}", command, name) for command in ("predict", "evaluate") for name in CONTENTS]

EVALUATE_LABELS = {
    "unknown_label.csv": b"id,sequence,label\ns1,MKTA,7\ns2,MKTAA,0\n",
    "string_unknown.csv": b"id,sequence,label\ns1,MKTA,maybe\ns2,MKTAA,0\n",
    "no_label_column.csv": b"id,sequence\ns1,MKTA\n",
    "empty_labels.csv": b"id,sequence,label\ns1,MKTA,\ns2,MKTAA,\n",
    "unlabelled.fasta": b">a\nMKTA\n>b\nMKTAA\n",
}

# ------------------------------------------------------------------ custom training files
TRAIN_FILES = {
    "single_class.csv": "id,sequence,label\n" + "".join(f"s{i},{SEQ[: 10 + i]},1\n" for i in range(12)),
    "conflict.csv": GOOD_CSV + f"c1,{SEQ[:10]},1\n",
    "dupe_ids.csv": GOOD_CSV + "s0,MKTAYIAKQRQIS,1\n",
    "ragged_train.csv": GOOD_CSV + "x,MKTA,1,2,3\n",
    "empty_train.csv": "",
    "header_train.csv": "id,sequence,label\n",
    "missing_labels.csv": GOOD_CSV.replace(",1\n", ",\n"),
    "bad_residues.csv": GOOD_CSV + "z,MKT1Z,1\n",
    "nolabel.fasta": GOOD_FASTA,
    "regression_words.csv": "id,sequence,label\n" + "".join(f"s{i},{SEQ[: 10 + i]},v{i}\n" for i in range(12)),
}
TRAIN_CASES = [(f"{command}-{name}", command, name) for command in ("fit", "cv") for name in TRAIN_FILES]

# ------------------------------------------------------------------ config keys, values, types, choices
BAD_OVERRIDES = [
    "nokey=1", "data.nokey=1", "adapter.nokey=1", "head.nokey=1", "optim.nokey=1", "bilevel.nokey=1",
    "trainer.nokey=1", "optim=3", "data=x", "noequals", "optim.lr=abc", "optim.max_epochs=1.5",
    "optim.max_epochs=0", "optim.max_epochs=-3", "optim.patience=many", "adapter.rank=0", "adapter.rank=-1",
    "adapter.rank=two", "adapter.alpha=big", "adapter.include_ffn=maybe", "adapter.method=nope", "head.pooling=nope",
    "optim.schedule=nope", "bilevel.hypergradient=nope", "trainer.logger=nope", "trainer.logger=csv,nope",
    "bilevel.unroll_steps=0", "data.batch_size=0", "data.batch_size=x", "data.val_fraction=abc", "seed=abc",
    "random_init=maybe", "quiet=3", "data.task=nope", "data.conflicts=keep", "data.duplicate_ids=x",
    "data.task=custom", "data.task=custom data.train_file=missing.csv", "data.train_file=missing.csv",
    "backbone=no_such_backbone", "bilevel.retrain=sometimes", "head.problem_type=nope",
    "optim.lr=-1e-4",
]
CONFIG_CASES = [(f"fit-{override}", "fit", override) for override in BAD_OVERRIDES]
CONFIG_CASES += [(f"cv-{override}", "cv", override) for override in BAD_OVERRIDES[:14]]
CONFIG_CASES += [(f"compare-{override}", "compare", override) for override in BAD_OVERRIDES[:10]]

CONFIG_FILES = {"missing": None, "not_yaml": "a: [1, 2\n", "a_list": "- 1\n- 2\n", "unknown_key": "optim:\n  lrr: 1\n",
                "section_scalar": "optim: 3\n", "bad_type": "optim:\n  lr: fast\n", "binary": "\x00\x01"}
CONFIG_FILE_CASES = [(f"{command}-config-{name}", command, name) for command in ("fit", "cv", "compare")
                     for name in CONFIG_FILES]

# ------------------------------------------------------------------ run directories
RUN_DAMAGE = ("missing_adapter", "missing_adapter_json", "flipped_byte", "incomplete", "marker_garbage",
              "marker_other_version", "truncated_weights", "adapter_json_garbage", "empty_dir", "is_a_file",
              "missing_dir", "changed_metrics")
RUN_COMMANDS = ("predict", "evaluate", "export", "serve", "analyze")
RUN_CASES = [(f"{command}-{damage}", command, damage) for command in RUN_COMMANDS for damage in RUN_DAMAGE]

# ------------------------------------------------------------------ outputs, locks, existing run directories
OTHER_CASES = ["predict-o-same", "predict-o-symlink", "predict-o-hardlink", "predict-o-run-adapter",
               "predict-o-missing-folder", "predict-o-missing-folder-slash", "predict-o-input-fasta",
               "evaluate-o-same", "evaluate-o-symlink", "evaluate-o-missing-folder", "evaluate-o-run-config",
               "predict-missing-input", "evaluate-missing-input", "predict-input-is-dir", "evaluate-input-is-dir",
               "fit-locked", "cv-locked", "compare-locked", "fit-existing-run", "cv-existing",
               "fit-resume-other-method", "fit-resume-other-task", "fit-out-is-file", "export-existing-out",
               "export-out-is-file", "data-info-unknown", "fit-task-unknown", "methods-backbone-unknown",
               "fit-labels-file-missing", "predict-bad-device", "evaluate-bad-device"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One complete tiny run for every case (copied where a case alters it)."""
    run_dir = tmp_path_factory.mktemp("bad_inputs") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
        patch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)
        assert main(["fit", "--task", "bbb", "--method", "lora", *TINY, "--out", str(run_dir)]) == 0
    return run_dir


@pytest.fixture
def case_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_module, "plot_predictions", lambda *args, **kwargs: None)
    monkeypatch.setattr(run_module, "plot_training_curves", lambda *args, **kwargs: None)
    return tmp_path


def snapshot(*roots: Path) -> dict:
    """Every file under the roots: its bytes (links by target)."""
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                files[str(path)] = ("link", os.readlink(path))
            elif path.is_file():
                files[str(path)] = path.read_bytes()
    return files


def refused(capsys, argv: list, *roots: Path, code: int = 1) -> str:
    """Run the CLI; assert the exit code, one `protadapt: error:` line, no traceback, no file touched."""
    before = snapshot(*roots)
    capsys.readouterr()
    returned = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert returned == code, (returned, err)
    assert len(lines) == 1 and lines[0].startswith("protadapt: error: "), err
    assert "Traceback" not in err + out
    assert snapshot(*roots) == before
    return lines[0]


@pytest.mark.parametrize("command, name", [c[1:] for c in CONTENT_CASES], ids=[c[0] for c in CONTENT_CASES])
def test_bad_content(command, name, run, case_dir, capsys):
    (case_dir / name).write_bytes(CONTENTS[name])
    line = refused(capsys, [command, run, name, "-o", "out.json" if command == "evaluate" else "out.csv"],
                   case_dir, run)
    assert name in line


@pytest.mark.parametrize("name", list(EVALUATE_LABELS), ids=[f"evaluate-{n}" for n in EVALUATE_LABELS])
def test_bad_labels_for_evaluate(name, run, case_dir, capsys):
    (case_dir / name).write_bytes(EVALUATE_LABELS[name])
    assert name in refused(capsys, ["evaluate", run, name], case_dir, run)


@pytest.mark.parametrize("command, name", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_bad_training_file(command, name, case_dir, capsys):
    (case_dir / name).write_text(TRAIN_FILES[name])
    problem = ["data.problem_type=regression"] if name.startswith("regression") else []
    line = refused(capsys, [command, "--task", "custom", f"data.train_file={name}", *problem, *TINY,
                            "--out", "out"], case_dir)
    assert name in line
    assert not (case_dir / "out").exists()


@pytest.mark.parametrize("command, override", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value(command, override, case_dir, capsys):
    argv = [command, "--backbone", "tiny", "--quiet", "--out", "out"]
    if command != "compare":
        argv += ["--task", "bbb"]
    else:
        argv += ["--tasks", "bbb", "--methods", "lora", "--seeds", "0"]
    refused(capsys, argv + override.split(), case_dir)
    assert not (case_dir / "out").exists()


@pytest.mark.parametrize("command, name", [c[1:] for c in CONFIG_FILE_CASES], ids=[c[0] for c in CONFIG_FILE_CASES])
def test_bad_config_file(command, name, case_dir, capsys):
    path = case_dir / "config.yaml"
    if CONFIG_FILES[name] is not None:
        path.write_text(CONFIG_FILES[name])
    argv = [command, "--config", path, "--backbone", "tiny", "--out", "out"]
    assert "config.yaml" in refused(capsys, argv, case_dir)
    assert not (case_dir / "out").exists()


def damage_run(run: Path, case_dir: Path, damage: str) -> Path:
    """A copy of the good run with one thing wrong."""
    target = case_dir / "damaged"
    if damage == "missing_dir":
        return target
    if damage == "is_a_file":
        target.write_text("not a run\n")
        return target
    if damage == "empty_dir":
        target.mkdir()
        return target
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints", "logs", ".lock"))
    weights, marker = target / "adapter.safetensors", target / "complete.json"
    if damage == "missing_adapter":
        weights.unlink()
    elif damage == "missing_adapter_json":
        (target / "adapter.json").unlink()
    elif damage == "flipped_byte":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "incomplete":
        marker.unlink()
    elif damage == "marker_garbage":
        marker.write_text("{not json")
    elif damage == "marker_other_version":
        marker.write_text(marker.read_text().replace('"format": 1', '"format": 99'))
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "adapter_json_garbage":
        (target / "adapter.json").write_text("{oops")
    elif damage == "changed_metrics":
        (target / "metrics.json").write_text("{}\n")
    return target


@pytest.mark.parametrize("command, damage", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_bad_run_directory(command, damage, run, case_dir, capsys):
    target = damage_run(run, case_dir, damage)
    (case_dir / "x.csv").write_text(GOOD_CSV)
    argv = {"predict": ["predict", target, "x.csv", "-o", "p.csv"], "evaluate": ["evaluate", target, "x.csv"],
            "export": ["export", target, "--format", "peft", "-o", "exported"],
            "serve": ["serve", target, "--port", "1"], "analyze": ["analyze", target, "--out", "analysis"]}[command]
    line = refused(capsys, argv, case_dir)
    assert "damaged" in line
    if damage in ("flipped_byte", "incomplete", "changed_metrics", "missing_adapter"):
        assert "--resume" in line or "refit" in line


@pytest.mark.parametrize("case", OTHER_CASES)
def test_outputs_locks_and_existing_runs(case, run, case_dir, capsys):
    (case_dir / "x.csv").write_text(GOOD_CSV)
    (case_dir / "x.fasta").write_text(GOOD_FASTA)
    argv, roots = other_case(case, run, case_dir)
    if case.endswith("-locked"):
        held = case_dir / "held"
        held.mkdir()
        (held / ".lock").write_text("pid 1 on elsewhere since then\n")
        with open(held / ".lock", "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            assert "in use by pid 1" in refused(capsys, argv, *roots)
        return
    refused(capsys, argv, *roots)


def other_case(case: str, run: Path, case_dir: Path) -> tuple[list, tuple]:
    """The command line of one output / lock / existing-directory case, and the folders it must not touch."""
    roots = (case_dir, run)
    fit = ["fit", "--task", "bbb", "--method", "lora", *TINY]
    if case in ("predict-o-symlink", "evaluate-o-symlink"):
        (case_dir / "link.csv").symlink_to(case_dir / "x.csv")
    if case == "predict-o-hardlink":
        os.link(case_dir / "x.csv", case_dir / "hard.csv")
    if case in ("fit-existing-run", "cv-existing", "fit-resume-other-method", "fit-resume-other-task"):
        shutil.copytree(run, case_dir / "held")
    if case.endswith("-is-dir"):
        (case_dir / "adir").mkdir()
    if case in ("fit-out-is-file", "export-out-is-file"):
        (case_dir / "held").write_text("a file\n")
    if case == "export-existing-out":
        (case_dir / "held").mkdir()
        (case_dir / "held" / "keep.txt").write_text("keep\n")
    return {
        "predict-o-same": ["predict", run, "x.csv", "-o", "x.csv"],
        "predict-o-symlink": ["predict", run, "x.csv", "-o", "link.csv"],
        "predict-o-hardlink": ["predict", run, "x.csv", "-o", "hard.csv"],
        "predict-o-run-adapter": ["predict", run, "x.csv", "-o", run / "adapter.safetensors"],
        "predict-o-missing-folder": ["predict", run, "x.csv", "-o", "missing/dir/p.csv"],
        "predict-o-missing-folder-slash": ["predict", run, "x.csv", "-o", "missing/"],
        "predict-o-input-fasta": ["predict", run, "x.fasta", "-o", "x.fasta"],
        "evaluate-o-same": ["evaluate", run, "x.csv", "-o", "x.csv"],
        "evaluate-o-symlink": ["evaluate", run, "x.csv", "-o", "link.csv"],
        "evaluate-o-missing-folder": ["evaluate", run, "x.csv", "-o", "missing/dir/x.json"],
        "evaluate-o-run-config": ["evaluate", run, "x.csv", "-o", run / "config.yaml"],
        "predict-missing-input": ["predict", run, "nope.csv"],
        "evaluate-missing-input": ["evaluate", run, "nope.csv"],
        "predict-input-is-dir": ["predict", run, "adir"],
        "evaluate-input-is-dir": ["evaluate", run, "adir"],
        "fit-locked": [*fit, "--out", "held"],
        "cv-locked": ["cv", "--task", "bbb", *TINY, "--out", "held"],
        "compare-locked": ["compare", "--tasks", "bbb", "--methods", "lora", "--seeds", "0", "--backbone", "tiny",
                           "--out", "held"],
        "fit-existing-run": [*fit, "--out", "held"],
        "cv-existing": ["cv", "--task", "bbb", *TINY, "--out", "held"],
        "fit-resume-other-method": ["fit", "--task", "bbb", "--method", "dora", *TINY, "--out", "held", "--resume"],
        "fit-resume-other-task": ["fit", "--task", "mic", "--method", "lora", *TINY, "--out", "held", "--resume"],
        "fit-out-is-file": [*fit, "--out", "held"],
        "export-existing-out": ["export", run, "--format", "peft", "-o", "held"],
        "export-out-is-file": ["export", run, "--format", "peft", "-o", "held"],
        "data-info-unknown": ["data", "info", "no_such_task"],
        "fit-task-unknown": ["fit", "--task", "no_such_task", *TINY, "--out", "out"],
        "methods-backbone-unknown": ["methods", "--backbone", "no_such_backbone"],
        "fit-labels-file-missing": ["fit", "--task", "custom", "data.train_file=x.fasta",
                                    "data.labels_file=missing.csv", *TINY, "--out", "out"],
        "predict-bad-device": ["predict", run, "x.csv", "--device", "tpu9"],
        "evaluate-bad-device": ["evaluate", run, "x.csv", "--device", "tpu9"],
    }[case], roots


def test_the_suite_has_at_least_150_cases():
    total = (len(CONTENT_CASES) + len(EVALUATE_LABELS) + len(TRAIN_CASES) + len(CONFIG_CASES)
             + len(CONFIG_FILE_CASES) + len(RUN_CASES) + len(OTHER_CASES))
    assert total >= 150, total
